//! Python mirrors of the protocol enums, with the same numbers.

use pyo3::prelude::*;

/// Declares a Python enum mirroring a Rust one, with conversions both ways.
macro_rules! mirror {
    ($(#[$doc:meta])* $py:ident as $name:literal <=> $rust:ty { $($variant:ident = $rv:ident = $n:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[pyclass(name = $name, module = "cuframes._native", eq, eq_int, frozen, hash, from_py_object)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum $py {
            $($variant = $n),+
        }

        impl From<$rust> for $py {
            fn from(v: $rust) -> Self {
                match v {
                    $(<$rust>::$rv => Self::$variant),+
                }
            }
        }

        #[pymethods]
        impl $py {
            /// Pickles by name, so enums cross `multiprocessing`.
            fn __reduce__<'py>(
                &self,
                py: Python<'py>,
            ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, pyo3::types::PyType>, &'static str))> {
                let name = match self {
                    $(Self::$variant => stringify!($variant)),+
                };
                let getattr = py.import("builtins")?.getattr("getattr")?;
                Ok((getattr, (py.get_type::<Self>(), name)))
            }
        }

        impl From<$py> for $rust {
            fn from(v: $py) -> Self {
                match v {
                    $($py::$variant => <$rust>::$rv),+
                }
            }
        }
    };
}

mirror! {
    /// Pixel format of a stream.
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
    /// How a subscriber reads: the newest frame, or every frame in order.
    PySubscriberMode as "SubscriberMode" <=> cuframes::Mode {
        NEWEST_ONLY = NewestOnly = 1,
        QUEUE = Queue = 2,
    }
}

mirror! {
    /// What the publisher does when a QUEUE subscriber lags.
    PyLosslessPolicy as "LosslessPolicy" <=> cuframes::LosslessPolicy {
        BLOCK = Block = 1,
        DROP_OLDEST = DropOldest = 2,
    }
}
