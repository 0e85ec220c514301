//! Rust errors as Python exceptions: one class per stable code, looked up
//! in `cuframes._errors` so Python code can catch and subclass them.

use cuframes::{Error, ErrorCode};
use pyo3::prelude::*;

/// The `CuframesError` subclass for `e`'s code, carrying its message.
pub fn to_py(e: Error) -> PyErr {
    raise(e.code(), &e.to_string())
}

/// The exception for `code` with `message`.
pub fn raise(code: ErrorCode, message: &str) -> PyErr {
    Python::attach(|py| {
        let made = py
            .import("cuframes._errors")
            .and_then(|m| m.getattr("exception_for"))
            .and_then(|f| f.call1((code as i32,)))
            .and_then(|cls| cls.call1((message,)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    })
}

/// Extension for `cuframes::Result`.
pub trait IntoPy<T> {
    /// Converts the error side.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for cuframes::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
