//! The library's log events (the `tracing` events of the `cuframes` crate,
//! which reach the `log` facade, and this module's own `log` records) as
//! Python `logging` records. A record's target becomes its logger's name
//! with `::` turned into `.`: `cuframes::publisher` logs to
//! `logging.getLogger("cuframes.publisher")`, so handlers on `"cuframes"`
//! see everything.

use log::{LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;
use pyo3_log::{Caching, Logger, ResetHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The installed bridge's cache handle.
static RESET: OnceLock<ResetHandle> = OnceLock::new();

/// Set when the interpreter starts to shut down (an `atexit` hook): from
/// then on records are dropped, since taking the GIL from another thread
/// during finalization may kill or hang that thread.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// `pyo3_log::Logger` that never tries to attach to a finalizing
/// interpreter.
struct Bridge(Logger);

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        !SHUTTING_DOWN.load(Ordering::Relaxed) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if SHUTTING_DOWN.load(Ordering::Relaxed) {
            return;
        }
        // `try_attach` declines when the interpreter is gone (or, on 3.13+,
        // finalizing); inside it `Logger::log` finds the thread attached.
        let _ = Python::try_attach(|_py| self.0.log(record));
    }

    fn flush(&self) {}
}

/// Marks the interpreter as shutting down (registered with `atexit`).
#[pyfunction]
fn _stop_logging() {
    SHUTTING_DOWN.store(true, Ordering::Relaxed);
}

/// Routes `log` records to Python's `logging`, once per process. Levels are
/// cached per logger after its first record (so disabled levels cost no
/// GIL): call `cuframes.reset_log_cache()` after changing levels at run
/// time.
pub fn install(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if RESET.get().is_some() {
        return Ok(());
    }
    let logger = Logger::new(py, Caching::LoggersAndLevels)?.filter(LevelFilter::Debug);
    let handle = logger.reset_handle();
    // Another copy of this module (a subinterpreter) may have won the race:
    // then its bridge serves this one too.
    if log::set_boxed_logger(Box::new(Bridge(logger))).is_ok() {
        log::set_max_level(LevelFilter::Debug);
        let _ = RESET.set(handle);
        let stop = wrap_pyfunction!(_stop_logging, m)?;
        py.import("atexit")?.call_method1("register", (stop,))?;
    }
    Ok(())
}

/// Forgets the cached logger levels, so that records are filtered by the
/// `logging` configuration as it is now. Call it after changing the level
/// of a `cuframes` logger (or the root logger) once records have flowed.
#[pyfunction]
pub fn reset_log_cache() {
    if let Some(handle) = RESET.get() {
        handle.reset();
    }
}
