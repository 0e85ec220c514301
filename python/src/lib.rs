//! The `cuframes._native` extension module behind the `cuframes` Python
//! package. See `docs/python.md`.

mod cuda;
mod dlpack;
mod enums;
mod errors;
mod frame;
mod holds;
mod logging;
mod numpy;
mod packets;
mod planes;
mod publisher;
mod source;
mod streams;
mod subscriber;

use pyo3::prelude::*;

/// Message of an error code (the same text as in Rust and C).
#[pyfunction]
fn strerror(code: i32) -> &'static str {
    cuframes::ErrorCode::from_i32(code).map_or("unknown error code", |c| c.description())
}

/// The module: classes, functions, the enums (from `cuframes._enums`), and
/// the `log` bridge to Python's `logging`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    logging::install(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // The enums are `enum.IntEnum`s written in Python; re-exported here.
    let enums = py.import("cuframes._enums")?;
    for name in ["PixelFormat", "SubscriberMode", "LosslessPolicy"] {
        m.add(name, enums.getattr(name)?)?;
    }
    m.add_class::<frame::PyFrame>()?;
    m.add_class::<subscriber::PySubscriber>()?;
    m.add_class::<publisher::PyPublisher>()?;
    m.add_class::<publisher::PyLease>()?;
    m.add_class::<dlpack::DLPackView>()?;
    m.add_class::<packets::PyPacket>()?;
    m.add_class::<packets::PyPacketSubscriber>()?;
    m.add_class::<packets::PyPacketPublisher>()?;
    m.add_function(wrap_pyfunction!(streams::stream_status, m)?)?;
    m.add_function(wrap_pyfunction!(streams::list_streams, m)?)?;
    m.add_function(wrap_pyfunction!(strerror, m)?)?;
    m.add_function(wrap_pyfunction!(logging::reset_log_cache, m)?)?;
    Ok(())
}
