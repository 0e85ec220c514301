//! A strict simulator of the CUDA driver API, for tests on machines
//! without a GPU.
//!
//! Built as a cdylib, it is loaded by cudarc in place of `libcuda.so`
//! (`scripts/cuda-sim.sh` links it under that name and points
//! `LD_LIBRARY_PATH` at it); the rlib serves the crate's own tests, which
//! call the entry points directly.
//!
//! Device memory lives in memfds mapped at private "shadow" addresses; the
//! device addresses handed out lie in a large PROT_NONE reservation, so a
//! host dereference faults. Streams run their ops on worker threads after
//! random delays, so missing synchronisation shows up as stale data. Every
//! use the driver documents as an error or undefined returns the error
//! code and is appended to `violations.log` in the state directory. See
//! `docs/cuda-sim.md`.
//!
//! No figure measured on the simulator is ever a GPU figure.
//!
//! The entry points are `unsafe extern "C"` functions with the driver
//! API's contract (valid pointers where the driver reads or writes them);
//! their documentation is NVIDIA's.
#![allow(clippy::missing_safety_doc)]

pub use cudarc::driver::sys;

mod abi;
pub mod api;
mod errors;
mod event;
mod mem;
mod state;
mod stream;
mod util;

pub use api::*;

use util::{report_violation, Fail, R};

/// Runs the body of one entry point: never unwinds across the FFI
/// boundary, logs the violation a failure carries.
pub(crate) fn guard(call: &'static str, f: impl FnOnce() -> R) -> sys::CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => util::SUCCESS,
        Ok(Err(Fail { code, why })) => {
            if let Some(w) = why {
                report_violation(call, &w);
            }
            code
        }
        Err(_) => {
            eprintln!("cuframes-sim: internal error (panic) in {call}");
            util::UNKNOWN
        }
    }
}
