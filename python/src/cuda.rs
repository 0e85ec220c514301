//! The few CUDA driver calls the binding makes itself, around a
//! `cuframes_cuda::CudaPublisher`: ordering other streams (a DLPack
//! consumer's, a producer's) before or after the publisher's stream with
//! local events, uploading a host image, and telling when enqueued work is
//! done. Driver API only, through cudarc (the same crate and run-time
//! loaded library as `cuframes_cuda`); used only once a CUDA publisher
//! exists, so the driver is loaded and initialised.

use cudarc::driver::sys;
use cuframes::{Error, ErrorCode, Result};
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// `CU_STREAM_PER_THREAD`: the calling thread's default stream.
pub const PER_THREAD_STREAM: usize = 2;

/// Whether two stream handles name the same stream: null and
/// `CU_STREAM_LEGACY` (1) are both the legacy default stream.
pub fn same_stream(a: usize, b: usize) -> bool {
    a == b || (a <= 1 && b <= 1)
}

/// Runs one driver call: `Ok` on success, else a `Cuda` error naming the
/// call and the driver's name for the code. A panic (cudarc panics when a
/// symbol is missing) becomes an error too.
fn call(what: &str, f: impl FnOnce() -> sys::CUresult) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(sys::CUresult::CUDA_SUCCESS) => Ok(()),
        Ok(code) => Err(Error::new(
            ErrorCode::Cuda,
            format!("{what}: {}", error_name(code)),
        )),
        Err(_) => Err(Error::new(
            ErrorCode::Cuda,
            format!("{what}: the CUDA driver cannot serve this call"),
        )),
    }
}

/// The driver's name of `code` (`CUDA_ERROR_...`), or its debug form.
fn error_name(code: sys::CUresult) -> String {
    let mut p: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: the driver writes a pointer to a static NUL-terminated string
    // (or leaves it null); it is read only when set.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe {
        sys::cuGetErrorName(code, &mut p)
    }));
    match r {
        Ok(sys::CUresult::CUDA_SUCCESS) if !p.is_null() => {
            // SAFETY: non-null and NUL-terminated, owned by the driver for
            // the life of the process.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
        _ => format!("{code:?}"),
    }
}

/// The primary context of one device (the one `cuframes_cuda`, the CUDA
/// runtime, PyTorch and CuPy use), retained while this lives.
pub struct Context {
    /// The device handle.
    dev: sys::CUdevice,
    /// The retained primary context.
    ctx: sys::CUcontext,
}

// SAFETY: a CUdevice is an integer and a CUcontext a driver handle any
// thread may make current; the driver serialises use of a context.
unsafe impl Send for Context {}
// SAFETY: as above; `&Context` only hands the handles to driver calls.
unsafe impl Sync for Context {}

/// Pops the context pushed by [`Context::enter`].
pub struct Entered(());

impl Drop for Entered {
    fn drop(&mut self) {
        let mut old: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pops the context this guard pushed on this thread.
        let _ = call("cuCtxPopCurrent", || unsafe {
            sys::cuCtxPopCurrent_v2(&mut old)
        });
    }
}

impl Context {
    /// Retains the primary context of device `ordinal` (which a CUDA
    /// publisher of this process already opened).
    pub fn retain(ordinal: u32) -> Result<Arc<Context>> {
        cuframes_cuda::driver_version()?;
        let mut dev: sys::CUdevice = 0;
        // SAFETY: writes one device handle; the driver is initialised.
        call("cuDeviceGet", || unsafe {
            sys::cuDeviceGet(&mut dev, ordinal as i32)
        })?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: writes one context handle; released in Drop.
        call("cuDevicePrimaryCtxRetain", || unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
        })?;
        Ok(Arc::new(Context { dev, ctx }))
    }

    /// Makes the context current on this thread until the guard goes.
    pub fn enter(&self) -> Result<Entered> {
        // SAFETY: the context is retained for the life of `self`.
        call("cuCtxPushCurrent", || unsafe {
            sys::cuCtxPushCurrent_v2(self.ctx)
        })?;
        Ok(Entered(()))
    }

    /// Makes stream `later` wait (on the GPU) for the work enqueued on
    /// `earlier` so far, through a fresh local event.
    pub fn order_after(self: &Arc<Self>, earlier: usize, later: usize) -> Result<()> {
        if same_stream(earlier, later) {
            return Ok(());
        }
        let ev = Event::new(self)?;
        ev.record(earlier)?;
        let _g = self.enter()?;
        // SAFETY: the event is live (recorded above) and `later` is a
        // stream of this context (the caller's word, as DLPack gives it);
        // the wait captures the record, so the event may go after it.
        call("cuStreamWaitEvent", || unsafe {
            sys::cuStreamWaitEvent(later as sys::CUstream, ev.raw, 0)
        })
    }

    /// Waits on the host until every stream of the context is idle.
    pub fn synchronize(&self) -> Result<()> {
        let _g = self.enter()?;
        // SAFETY: no arguments; the context is current.
        call("cuCtxSynchronize", || unsafe { sys::cuCtxSynchronize() })
    }

    /// Enqueues a copy of `src` to device address `dst` on `stream`, and
    /// returns once `src` may be reused (at once for pageable memory, which
    /// the driver stages; after the copy for page-locked memory).
    ///
    /// # Safety
    /// `dst` must address `src.len()` writable bytes of device memory of
    /// this context that nothing else writes until the copy has run, and
    /// `stream` must be a live stream of this context.
    pub unsafe fn upload(&self, dst: u64, src: &[u8], stream: usize) -> Result<()> {
        let _g = self.enter()?;
        // SAFETY: the caller vouches for the device range and the stream;
        // the host range is `src`, alive until we return (see below).
        call("cuMemcpyHtoDAsync", || unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), stream as sys::CUstream)
        })?;
        if is_page_locked(src.as_ptr()) {
            // An async copy from page-locked memory reads it when it runs.
            // SAFETY: the caller's stream, in the current context.
            call("cuStreamSynchronize", || unsafe {
                sys::cuStreamSynchronize(stream as sys::CUstream)
            })?;
        }
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `retain`.
        let _ = call("cuDevicePrimaryCtxRelease", || unsafe {
            sys::cuDevicePrimaryCtxRelease_v2(self.dev)
        });
    }
}

/// Whether host memory at `ptr` is page-locked (registered or allocated by
/// CUDA); the caller made a context current.
fn is_page_locked(ptr: *const u8) -> bool {
    let mut kind: u32 = 0;
    // SAFETY: the driver only looks the address up and writes one u32;
    // pageable memory yields an error, not a write.
    call("cuPointerGetAttribute", || unsafe {
        sys::cuPointerGetAttribute(
            (&mut kind as *mut u32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            ptr as u64,
        )
    })
    .is_ok()
}

/// An event local to this process (no timing).
pub struct Event {
    /// The driver's handle.
    raw: sys::CUevent,
    /// Its context, retained while the event lives.
    ctx: Arc<Context>,
}

// SAFETY: a CUevent is a driver handle usable from any thread with its
// context current (every use enters it).
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// A new event of `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Event> {
        let _g = ctx.enter()?;
        let mut raw: sys::CUevent = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: writes one event handle; the context is current.
        call("cuEventCreate", || unsafe {
            sys::cuEventCreate(&mut raw, flags)
        })?;
        Ok(Event {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// Records the event after the work enqueued on `stream` so far (a
    /// stream of this context, or 1/2 for the default streams).
    pub fn record(&self, stream: usize) -> Result<()> {
        let _g = self.ctx.enter()?;
        // SAFETY: the event is live; the stream belongs to the current
        // context (the caller's word).
        call("cuEventRecord", || unsafe {
            sys::cuEventRecord(self.raw, stream as sys::CUstream)
        })
    }

    /// Whether the recorded work has completed.
    pub fn done(&self) -> Result<bool> {
        let _g = self.ctx.enter()?;
        // SAFETY: a live event of the current context.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { sys::cuEventQuery(self.raw) }));
        match r {
            Ok(sys::CUresult::CUDA_SUCCESS) => Ok(true),
            Ok(sys::CUresult::CUDA_ERROR_NOT_READY) => Ok(false),
            Ok(code) => Err(Error::new(
                ErrorCode::Cuda,
                format!("cuEventQuery: {}", error_name(code)),
            )),
            Err(_) => Err(Error::new(
                ErrorCode::Cuda,
                "cuEventQuery: the CUDA driver cannot serve this call",
            )),
        }
    }

    /// Waits on the host until the recorded work has completed.
    pub fn synchronize(&self) -> Result<()> {
        let _g = self.ctx.enter()?;
        // SAFETY: a live event of the current context.
        call("cuEventSynchronize", || unsafe {
            sys::cuEventSynchronize(self.raw)
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(_g) = self.ctx.enter() {
            // SAFETY: our event, destroyed once (waits already enqueued on
            // it keep their record).
            let _ = call("cuEventDestroy", || unsafe {
                sys::cuEventDestroy_v2(self.raw)
            });
        }
    }
}
