//! Streams whose frames live in GPU memory (`cuframes-cuda`, docs/cuda.md),
//! for C: `cuframes_cuda_*`.
//!
//! The CUDA driver is loaded at run time, the first time a call needs it:
//! on a machine without one these calls return `CUFRAMES_ERR_CUDA` with a
//! message naming `libcuda.so`, after the argument checks. Device addresses
//! are `uint64_t` (the value of a `CUdeviceptr`); streams are `uintptr_t`
//! (the value of a `CUstream` / `cudaStream_t` of the device's primary
//! context; 0 and 1 are the legacy default stream). The per-thread default
//! stream (2) is refused where a stream is kept, because a handle may move
//! between threads and it names another stream on each.

mod publisher;
mod subscriber;

pub use publisher::*;
pub use subscriber::*;

use crate::{fill, invalid};
use cuframes::Result;
use cuframes_cuda::{ExportMode, RawStream};
use std::ffi::c_int;

/// The C type of a stream handle: `uintptr_t` (stdint.h). Not emitted in
/// the header: C has it.
#[allow(non_camel_case_types)]
pub type uintptr_t = usize;

/// Export mode: VMM memory passed as a file descriptor where the device
/// supports it, else legacy CUDA IPC.
pub const CUFRAMES_CUDA_EXPORT_AUTO: u32 = 0;
/// Export mode: legacy CUDA IPC (`cuMemAlloc` + `cuIpcGetMemHandle`);
/// subscribers must share the publisher's pid and IPC namespaces.
pub const CUFRAMES_CUDA_EXPORT_IPC: u32 = 1;
/// Export mode: a VMM allocation (`cuMemCreate`) whose file descriptor is
/// passed over the stream's unix socket; works across pid namespaces.
pub const CUFRAMES_CUDA_EXPORT_VMM_FD: u32 = 2;

/// `device` argument of `cuframes_cuda_subscriber_create`: the GPU whose
/// UUID is the publisher's (ordinals differ between processes).
pub const CUFRAMES_CUDA_DEVICE_AUTO: i32 = -1;

/// Stream handle of the legacy default stream (`CU_STREAM_LEGACY`; 0
/// names it too).
pub const CUFRAMES_CUDA_STREAM_LEGACY: uintptr_t = 1;
/// Stream handle of the calling thread's per-thread default stream
/// (`CU_STREAM_PER_THREAD`). Refused as a publisher stream and as a
/// consumer stream (`CUFRAMES_ERR_INVALID_ARGUMENT`); accepted by
/// `cuframes_cuda_frame_use_on`.
pub const CUFRAMES_CUDA_STREAM_PER_THREAD: uintptr_t = 2;

/// A stream handle from C as the driver's type.
pub(crate) fn raw(s: uintptr_t) -> RawStream {
    s as RawStream
}

/// A stream handle as C sees it.
pub(crate) fn handle(s: RawStream) -> uintptr_t {
    s as uintptr_t
}

/// Refuses stream handles that cannot be kept by a handle used from any
/// thread: the per-thread default stream names another stream on every
/// thread.
pub(crate) fn kept_stream(s: uintptr_t, what: &str) -> Result<uintptr_t> {
    if s == CUFRAMES_CUDA_STREAM_PER_THREAD {
        return Err(invalid(format!(
            "{what} 2 is the per-thread default stream (CU_STREAM_PER_THREAD), a different \
             stream on every thread: pass 0 or 1 (the legacy default stream) or a stream you \
             created"
        )));
    }
    Ok(s)
}

/// The C constant of an export mode in use.
pub(crate) fn export_code(m: ExportMode) -> u32 {
    match m {
        ExportMode::Ipc => CUFRAMES_CUDA_EXPORT_IPC,
        ExportMode::VmmFd => CUFRAMES_CUDA_EXPORT_VMM_FD,
    }
}

/// 1 if a CUDA driver loaded and initialised in this process, else 0. The
/// first call loads the driver (`dlopen("libcuda.so")` and `cuInit`);
/// later calls give the same answer.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn cuframes_cuda_available() -> c_int {
    crate::guard(0, || c_int::from(cuframes_cuda::is_available()))
}

/// Stores the CUDA driver version (e.g. 12080 for 12.8) in `*version`
/// (0 on failure).
///
/// Errors: `INVALID_ARGUMENT` (NULL), `CUDA` (no driver: the message names
/// `libcuda.so`; or `cuInit` failed).
///
/// Thread safety: any thread, any time.
///
/// # Safety
/// `version` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_driver_version(version: *mut c_int) -> c_int {
    // SAFETY: NULL or writable per the contract.
    unsafe { fill(version, "version", 0, cuframes_cuda::driver_version) }
}

/// Stores the number of CUDA devices this process sees in `*count` (0 on
/// failure).
///
/// Errors: `INVALID_ARGUMENT` (NULL), `CUDA` (no driver).
///
/// Thread safety: any thread, any time.
///
/// # Safety
/// `count` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
#[no_mangle]
pub unsafe extern "C" fn cuframes_cuda_device_count(count: *mut u32) -> c_int {
    // SAFETY: NULL or writable per the contract.
    unsafe { fill(count, "count", 0, cuframes_cuda::device_count) }
}

// C may move these handles between threads between calls and use frames
// from any thread: the wrapped types must allow it.
const _: fn() = || {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<cuframes_cuda::CudaPublisher>();
    send::<cuframes_cuda::CudaSubscriber>();
    send_sync::<cuframes_cuda::CudaFrame>();
};

#[cfg(test)]
mod tests;
