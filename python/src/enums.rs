//! The protocol enums. They are Python `enum.IntEnum`s defined in
//! `cuframes/_enums.py` (so they behave as the stubs say: `.name`,
//! `.value`, iteration, `PixelFormat(1)`); at the boundary they convert by
//! value to and from the Rust enums.

use crate::errors::raise;
use cuframes::ErrorCode;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyInt, PyType};

/// Declares a Rust newtype standing for a Python `IntEnum` of
/// `cuframes._enums`, with conversions both ways.
macro_rules! mirror {
    ($(#[$doc:meta])* $py:ident as $name:literal <=> $rust:ty { $($variant:ident = $rv:ident = $n:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $py(pub $rust);

        #[allow(non_upper_case_globals, dead_code)]
        impl $py {
            $(
                #[doc = concat!("`", $name, ".", stringify!($variant), "`.")]
                pub const $variant: Self = Self(<$rust>::$rv);
            )+

            /// The Python class (`cuframes.` + its name).
            pub fn class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
                static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
                CLASS.import(py, "cuframes._enums", $name)
            }

            /// The member with number `n`.
            pub fn from_value(n: i64) -> Option<Self> {
                match n {
                    $($n => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The member's number.
            pub fn value(self) -> i64 {
                match self.0 {
                    $(<$rust>::$rv => $n),+
                }
            }

            /// The member's name.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $(<$rust>::$rv => stringify!($variant)),+
                }
            }

            /// `"NAME = n, ..."` for error messages.
            fn choices() -> &'static str {
                concat!($(stringify!($variant), " = ", $n, ", "),+)
            }
        }

        impl From<$rust> for $py {
            fn from(v: $rust) -> Self {
                Self(v)
            }
        }

        impl From<$py> for $rust {
            fn from(v: $py) -> Self {
                v.0
            }
        }

        /// Takes a member of the Python enum or its plain `int` value; a
        /// member of another enum (or a bool) is a `TypeError`, an unknown
        /// number a `CuframesInvalidArgumentError`.
        impl<'a, 'py> FromPyObject<'a, 'py> for $py {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                let py = obj.py();
                let class = Self::class(py)?;
                if !(obj.is_instance(class)? || obj.is_exact_instance_of::<PyInt>()) {
                    let given = obj.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string());
                    return Err(PyTypeError::new_err(format!(
                        "expected cuframes.{} or its int value ({}), not {given}",
                        $name,
                        Self::choices().trim_end_matches(", ")
                    )));
                }
                let n: i64 = obj.extract()?;
                Self::from_value(n).ok_or_else(|| {
                    raise(
                        ErrorCode::InvalidArgument,
                        &format!(
                            "{n} is not a cuframes.{} ({})",
                            $name,
                            Self::choices().trim_end_matches(", ")
                        ),
                    )
                })
            }
        }

        impl<'py> IntoPyObject<'py> for $py {
            type Target = PyAny;
            type Output = Bound<'py, PyAny>;
            type Error = PyErr;

            fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                Self::class(py)?.call1((self.value(),))
            }
        }
    };
}

mirror! {
    /// Pixel format of a stream (`cuframes.PixelFormat`).
    PyPixelFormat as "PixelFormat" <=> cuframes::PixelFormat {
        NV12 = Nv12 = 1,
        P010 = P010 = 2,
        GRAY8 = Gray8 = 3,
        RGB24 = Rgb24 = 4,
        RGBA8 = Rgba8 = 5,
        BGR24 = Bgr24 = 6,
    }
}

mirror! {
    /// How a subscriber reads (`cuframes.SubscriberMode`).
    PySubscriberMode as "SubscriberMode" <=> cuframes::Mode {
        NEWEST_ONLY = NewestOnly = 1,
        QUEUE = Queue = 2,
    }
}

mirror! {
    /// What the publisher does when a QUEUE subscriber lags
    /// (`cuframes.LosslessPolicy`).
    PyLosslessPolicy as "LosslessPolicy" <=> cuframes::LosslessPolicy {
        BLOCK = Block = 1,
        DROP_OLDEST = DropOldest = 2,
    }
}
