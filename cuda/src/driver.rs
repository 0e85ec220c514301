//! The CUDA driver, loaded at run time: one checked entry point per call,
//! the primary context of a device, and owned streams and events.
//!
//! Nothing here panics when the driver is missing: [`driver_version`]
//! probes for `libcuda.so` before cudarc's loader (which panics) is ever
//! touched, and every call goes through [`call`], which also turns a
//! missing symbol (an old driver) into an error.

use cudarc::driver::sys;
use cuframes::{Error, ErrorCode, Result};
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A raw CUDA stream handle (`CUstream`, the same value as a runtime
/// `cudaStream_t`). Null is the legacy default stream.
pub type RawStream = sys::CUstream;

/// A device address (`CUdeviceptr`).
pub type DevicePtr = u64;

/// Runs one driver call: `Ok` on `CUDA_SUCCESS`, otherwise a
/// [`ErrorCode::Cuda`] error naming the call and the driver's message. A
/// panic inside (cudarc panics when a symbol is missing) becomes an error
/// too.
pub(crate) fn call(what: &'static str, f: impl FnOnce() -> sys::CUresult) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(sys::CUresult::CUDA_SUCCESS) => Ok(()),
        Ok(code) => Err(cuda_error(what, code)),
        Err(panic) => Err(Error::new(
            ErrorCode::Cuda,
            format!(
                "{what}: the CUDA driver cannot serve this call: {}",
                panic_text(&panic)
            ),
        )),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown failure".to_owned())
}

/// The error for a failed call, with the driver's name and description of
/// the code (e.g. `cuDeviceGet: CUDA_ERROR_INVALID_DEVICE (invalid device
/// ordinal)`).
pub(crate) fn cuda_error(what: &str, code: sys::CUresult) -> Error {
    // SAFETY: `f` is one of the driver's error-text lookups (the type is
    // theirs); the call below passes a valid out-pointer.
    let text = |f: unsafe fn(sys::CUresult, *mut *const std::ffi::c_char) -> sys::CUresult| {
        let mut p: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: the driver writes a pointer to a static NUL-terminated
        // string (or leaves it null) for any code; we only read it when set.
        let r = catch_unwind(AssertUnwindSafe(|| unsafe { f(code, &mut p) }));
        match r {
            Ok(sys::CUresult::CUDA_SUCCESS) if !p.is_null() => {
                // SAFETY: non-null and NUL-terminated, owned by the driver
                // for the life of the process.
                Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            }
            _ => None,
        }
    };
    let name = text(sys::cuGetErrorName).unwrap_or_else(|| format!("{code:?}"));
    let desc = text(sys::cuGetErrorString).unwrap_or_default();
    Error::new(ErrorCode::Cuda, format!("{what}: {name} ({desc})"))
}

/// Loads the driver and initialises it once per process; the same result
/// (the driver version, e.g. 12080, or the reason there is none) every
/// time after.
///
/// ```
/// match cuframes_cuda::driver_version() {
///     Ok(v) => println!("CUDA driver {}.{}", v / 1000, v % 1000 / 10),
///     Err(e) => assert_eq!(e.code(), cuframes::ErrorCode::Cuda),
/// }
/// ```
pub fn driver_version() -> Result<i32> {
    static STATE: OnceLock<std::result::Result<i32, String>> = OnceLock::new();
    STATE
        .get_or_init(load_driver)
        .clone()
        .map_err(|m| Error::new(ErrorCode::Cuda, m))
}

/// Whether a CUDA driver loaded and initialised here (at least one device).
pub fn is_available() -> bool {
    driver_version().is_ok()
}

fn load_driver() -> std::result::Result<i32, String> {
    // SAFETY: only tries `dlopen` on the candidate names and closes what it
    // opened; loading the NVIDIA driver library runs no code of ours.
    let present = catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        let names = cudarc::get_lib_name_candidates("cuda");
        let shown: Vec<&str> = names.iter().map(String::as_str).take(3).collect();
        return Err(format!(
            "libcuda.so not found: no NVIDIA driver on this machine (searched {}, ...; \
             set LD_LIBRARY_PATH if it lives elsewhere)",
            shown.join(", ")
        ));
    }
    // SAFETY: cuInit takes flags by value and may be called any number of times.
    call("cuInit", || unsafe { sys::cuInit(0) }).map_err(|e| e.message().to_owned())?;
    let mut v = 0i32;
    // SAFETY: writes one int through a valid pointer.
    call("cuDriverGetVersion", || unsafe {
        sys::cuDriverGetVersion(&mut v)
    })
    .map_err(|e| e.message().to_owned())?;
    Ok(v)
}

/// Number of CUDA devices visible to this process.
pub fn device_count() -> Result<u32> {
    driver_version()?;
    let mut n = 0i32;
    // SAFETY: writes one int through a valid pointer; the driver is initialised.
    call("cuDeviceGetCount", || unsafe {
        sys::cuDeviceGetCount(&mut n)
    })?;
    Ok(n.max(0) as u32)
}

/// The name of device `ordinal` (e.g. `NVIDIA H200`; the driver simulator
/// names its devices `cuframes-sim GPU <n>`).
///
/// ```
/// if let Ok(name) = cuframes_cuda::device_name(0) {
///     println!("GPU 0 is {name}");
/// }
/// ```
pub fn device_name(ordinal: u32) -> Result<String> {
    driver_version()?;
    let mut dev: sys::CUdevice = 0;
    // SAFETY: writes one device handle; the driver checks the ordinal.
    call("cuDeviceGet", || unsafe {
        sys::cuDeviceGet(&mut dev, ordinal as i32)
    })?;
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: the driver writes a NUL-terminated name of at most `len`
    // bytes into `buf`.
    call("cuDeviceGetName", || unsafe {
        sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as i32, dev)
    })?;
    // SAFETY: NUL-terminated within the buffer (the driver truncates).
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// Whether device `ordinal` is the cuframes driver simulator rather than
/// a GPU (its figures are never GPU figures; it has no video decoder).
pub fn is_simulator(ordinal: u32) -> bool {
    device_name(ordinal).is_ok_and(|n| n.starts_with("cuframes-sim"))
}

/// A device and its retained primary context (the context the CUDA runtime,
/// PyTorch and CuPy use, so pointers and streams are shared with them).
///
/// ```
/// use cuframes_cuda::raw::Device;
/// match Device::open(0) {
///     Ok(dev) => {
///         let _g = dev.enter()?; // the primary context is current here
///         dev.synchronize()?;
///     }
///     Err(e) => assert_eq!(e.code(), cuframes::ErrorCode::Cuda), // no GPU here
/// }
/// # Ok::<(), cuframes::Error>(())
/// ```
pub struct Device {
    pub(crate) ordinal: u32,
    pub(crate) dev: sys::CUdevice,
    pub(crate) ctx: sys::CUcontext,
    pub(crate) uuid: [u8; 16],
}

// SAFETY: CUdevice is an integer and CUcontext a driver handle that any
// thread may make current; the driver serialises use of a context.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only hands the handles to driver calls.
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `ordinal`: `Cuda` error with the driver's message when
    /// there is no driver or no such device.
    pub fn open(ordinal: u32) -> Result<Arc<Device>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::new(
                ErrorCode::Cuda,
                format!(
                    "CUDA device {ordinal} does not exist: this process sees {count} device(s)"
                ),
            ));
        }
        let mut dev: sys::CUdevice = 0;
        // SAFETY: writes one device handle; the ordinal was range-checked.
        call("cuDeviceGet", || unsafe {
            sys::cuDeviceGet(&mut dev, ordinal as i32)
        })?;
        let mut uuid = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: writes 16 bytes into a valid CUuuid.
        call("cuDeviceGetUuid", || unsafe {
            sys::cuDeviceGetUuid_v2(&mut uuid, dev)
        })?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: writes one context handle; released in Drop.
        call("cuDevicePrimaryCtxRetain", || unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
        })?;
        Ok(Arc::new(Device {
            ordinal,
            dev,
            ctx,
            uuid: uuid.bytes.map(|b| b as u8),
        }))
    }

    /// The device's ordinal (as given to [`Device::open`]).
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// The UUID of device `ordinal` without retaining its context.
    pub(crate) fn uuid_of(ordinal: u32) -> Result<[u8; 16]> {
        let mut dev: sys::CUdevice = 0;
        // SAFETY: as in `open`.
        call("cuDeviceGet", || unsafe {
            sys::cuDeviceGet(&mut dev, ordinal as i32)
        })?;
        let mut uuid = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: as in `open`.
        call("cuDeviceGetUuid", || unsafe {
            sys::cuDeviceGetUuid_v2(&mut uuid, dev)
        })?;
        Ok(uuid.bytes.map(|b| b as u8))
    }

    /// Makes the primary context current on this thread until the guard goes.
    pub fn enter(&self) -> Result<CtxGuard> {
        // SAFETY: the context is retained for the life of `self`.
        call("cuCtxPushCurrent", || unsafe {
            sys::cuCtxPushCurrent_v2(self.ctx)
        })?;
        Ok(CtxGuard(()))
    }

    /// Waits on the host until every stream of the primary context is idle.
    pub fn synchronize(&self) -> Result<()> {
        let _g = self.enter()?;
        synchronize_context()
    }

    /// Enqueues a copy of `src` to device address `dst` on `stream`, and
    /// returns once `src` may be reused (at once for pageable memory, which
    /// the driver stages; after the copy for page-locked memory).
    ///
    /// # Safety
    /// `dst` must address `src.len()` writable bytes of device memory of
    /// this context that nothing else writes until the copy has run, and
    /// `stream` must be a live stream of this context.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn upload(&self, dst: DevicePtr, src: &[u8], stream: RawStream) -> Result<()> {
        let _g = self.enter()?;
        // SAFETY: the caller vouches for the device range and the stream;
        // the host range is `src`, alive until we return (see below).
        call("cuMemcpyHtoDAsync", || unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), stream)
        })?;
        if is_page_locked(src.as_ptr()) {
            // An async copy from page-locked memory reads it when it runs.
            synchronize(stream)?;
        }
        Ok(())
    }

    /// Checks that streams of this device can order work through 64-bit
    /// words in host memory (`cuStreamWaitValue64` / `cuStreamWriteValue64`
    /// on registered memory), which cuframes uses across processes.
    pub(crate) fn check_stream_memory_ops(&self) -> Result<()> {
        let ops = self.attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS,
        )?;
        let mapped =
            self.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)?;
        if ops == 0 || mapped == 0 {
            return Err(Error::new(
                ErrorCode::Cuda,
                format!(
                    "CUDA device {} cannot wait on 64-bit values in mapped host memory \
                     (stream memory operations {}, host mapping {}): cuframes orders GPU \
                     work across processes with them",
                    self.ordinal,
                    if ops == 0 { "unsupported" } else { "supported" },
                    if mapped == 0 {
                        "unsupported"
                    } else {
                        "supported"
                    },
                ),
            ));
        }
        Ok(())
    }

    /// An integer device attribute.
    pub(crate) fn attribute(&self, a: sys::CUdevice_attribute) -> Result<i32> {
        let mut v = 0;
        // SAFETY: writes one int; `dev` is a valid device handle.
        call("cuDeviceGetAttribute", || unsafe {
            sys::cuDeviceGetAttribute(&mut v, a, self.dev)
        })?;
        Ok(v)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `open`.
        let _ = call("cuDevicePrimaryCtxRelease", || unsafe {
            sys::cuDevicePrimaryCtxRelease_v2(self.dev)
        });
    }
}

/// Pops the context pushed by [`Device::enter`] when dropped.
pub struct CtxGuard(());

impl Drop for CtxGuard {
    fn drop(&mut self) {
        let mut old: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pops the context this guard pushed on this thread.
        let _ = call("cuCtxPopCurrent", || unsafe {
            sys::cuCtxPopCurrent_v2(&mut old)
        });
    }
}

/// An event local to this process (no timing), for ordering one stream
/// after another or telling on the host when enqueued work is done. It
/// retains its device's context while it lives; every method makes that
/// context current for the call.
///
/// ```
/// use cuframes_cuda::raw::{Device, Event, RawStream, PER_THREAD_STREAM};
/// if let Ok(dev) = Device::open(0) {
///     let ev = Event::local(&dev)?;
///     ev.record(PER_THREAD_STREAM as RawStream)?;
///     ev.synchronize()?;
///     assert!(ev.is_done()?);
/// }
/// # Ok::<(), cuframes::Error>(())
/// ```
pub struct Event {
    pub(crate) raw: sys::CUevent,
    dev: Arc<Device>,
}

// SAFETY: a CUevent is a driver handle usable from any thread with its
// context current (every use enters it).
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// A new event local to this process, for ordering one stream after
    /// another.
    pub fn local(dev: &Arc<Device>) -> Result<Event> {
        let _g = dev.enter()?;
        let mut raw: sys::CUevent = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        // SAFETY: writes one event handle; the context is current.
        call("cuEventCreate", || unsafe {
            sys::cuEventCreate(&mut raw, flags)
        })?;
        Ok(Event {
            raw,
            dev: dev.clone(),
        })
    }

    /// Records the event after the work enqueued on `stream` so far (a
    /// stream of the event's context, or 1/2 for the default streams).
    pub fn record(&self, stream: RawStream) -> Result<()> {
        let _g = self.dev.enter()?;
        record(self, stream)
    }

    /// Whether the recorded work has completed (`cuEventQuery`).
    pub fn is_done(&self) -> Result<bool> {
        let _g = self.dev.enter()?;
        // SAFETY: a live event of the current context.
        query("cuEventQuery", || unsafe { sys::cuEventQuery(self.raw) })
    }

    /// Waits on the host until the recorded work has completed.
    pub fn synchronize(&self) -> Result<()> {
        let _g = self.dev.enter()?;
        event_wait(self)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: the event is ours and destroyed once.
            let _ = call("cuEventDestroy", || unsafe {
                sys::cuEventDestroy_v2(self.raw)
            });
        }
    }
}

/// A stream created by this crate (non-blocking with respect to the legacy
/// default stream).
pub(crate) struct Stream {
    pub raw: sys::CUstream,
    dev: Arc<Device>,
}

// SAFETY: a CUstream is a driver handle usable from any thread with its
// context current.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    pub fn new(dev: &Arc<Device>) -> Result<Stream> {
        let _g = dev.enter()?;
        let mut raw: sys::CUstream = std::ptr::null_mut();
        // SAFETY: writes one stream handle; the context is current.
        call("cuStreamCreate", || unsafe {
            sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Stream {
            raw,
            dev: dev.clone(),
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: the stream is ours; pending work completes first
            // (cuStreamDestroy does not wait, so synchronise).
            let _ = call("cuStreamSynchronize", || unsafe {
                sys::cuStreamSynchronize(self.raw)
            });
            // SAFETY: destroyed once, after its work finished.
            let _ = call("cuStreamDestroy", || unsafe {
                sys::cuStreamDestroy_v2(self.raw)
            });
        }
    }
}

/// `CU_STREAM_PER_THREAD`: the calling thread's default stream (cast it
/// to [`RawStream`] to pass it as a stream).
pub const PER_THREAD_STREAM: usize = 2;

/// Waits on the host until every stream of the current context is idle.
pub(crate) fn synchronize_context() -> Result<()> {
    // SAFETY: no arguments; the caller made a context current.
    call("cuCtxSynchronize", || unsafe { sys::cuCtxSynchronize() })
}

/// Runs one driver query through [`call`]: `Ok(true)` on `CUDA_SUCCESS`,
/// `Ok(false)` on `CUDA_ERROR_NOT_READY`, otherwise the call's error.
fn query(what: &'static str, f: impl FnOnce() -> sys::CUresult) -> Result<bool> {
    let mut ready = true;
    call(what, || match f() {
        sys::CUresult::CUDA_ERROR_NOT_READY => {
            ready = false;
            sys::CUresult::CUDA_SUCCESS
        }
        code => code,
    })?;
    Ok(ready)
}

/// Whether `stream` has finished all its work (`cuStreamQuery`).
pub(crate) fn is_idle(stream: RawStream) -> Result<bool> {
    // SAFETY: the caller passes a stream valid in the current context.
    query("cuStreamQuery", || unsafe { sys::cuStreamQuery(stream) })
}

/// Waits on the host until `stream` is idle, polling (so `tick` can clear
/// what the stream waits on, e.g. settle a dead peer's counters), until
/// `deadline`: false if the stream is still busy then.
pub(crate) fn wait_idle(
    stream: RawStream,
    deadline: Instant,
    mut tick: impl FnMut(),
) -> Result<bool> {
    let mut nap = Duration::from_micros(20);
    let mut last_tick = Instant::now();
    loop {
        if is_idle(stream)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        if now - last_tick >= Duration::from_millis(20) {
            tick();
            last_tick = now;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}

/// Waits on the host until `stream` has finished its work.
pub(crate) fn synchronize(stream: RawStream) -> Result<()> {
    // SAFETY: the caller passes a stream valid in the current context.
    call("cuStreamSynchronize", || unsafe {
        sys::cuStreamSynchronize(stream)
    })
}

/// Makes `later` wait (on the GPU) for the work enqueued on `earlier` so
/// far, through a fresh local event (both streams of `dev`'s context, or
/// 1/2 for the default streams).
pub fn order_after(dev: &Arc<Device>, earlier: RawStream, later: RawStream) -> Result<()> {
    let ev = Event::local(dev)?;
    let _g = dev.enter()?;
    record(&ev, earlier)?;
    stream_wait(later, &ev)
}

/// Waits on the host for the last record of `event`.
pub(crate) fn event_wait(event: &Event) -> Result<()> {
    // SAFETY: the event is live; the caller made its context current.
    call("cuEventSynchronize", || unsafe {
        sys::cuEventSynchronize(event.raw)
    })
}

/// Makes `stream` wait for the last record of `event`.
pub(crate) fn stream_wait(stream: RawStream, event: &Event) -> Result<()> {
    // SAFETY: both handles are live; the caller made their context current.
    call("cuStreamWaitEvent", || unsafe {
        sys::cuStreamWaitEvent(stream, event.raw, 0)
    })
}

/// Records `event` on `stream`.
pub(crate) fn record(event: &Event, stream: RawStream) -> Result<()> {
    // SAFETY: both handles are live; the caller made their context current.
    call("cuEventRecord", || unsafe {
        sys::cuEventRecord(event.raw, stream)
    })
}

/// Enqueues on `stream` a write of `value` to the 64-bit word at device
/// address `addr`, after (and visible after) all earlier work on the
/// stream: the driver's default write has a system-scope memory fence.
pub(crate) fn write_value(stream: RawStream, addr: DevicePtr, value: u64) -> Result<()> {
    // SAFETY: `addr` is an aligned word of a region the caller registered
    // or allocated in the current context; the stream is live.
    call("cuStreamWriteValue64", || unsafe {
        sys::cuStreamWriteValue64_v2(stream, addr, value, 0)
    })
}

/// Makes `stream` wait (on the GPU) until the 64-bit word at `addr` is at
/// least `value`.
pub(crate) fn wait_value(stream: RawStream, addr: DevicePtr, value: u64) -> Result<()> {
    // SAFETY: as in `write_value`; GEQ is flag 0.
    call("cuStreamWaitValue64", || unsafe {
        sys::cuStreamWaitValue64_v2(stream, addr, value, 0)
    })
}

/// Copies a 2D region (rows of `width` bytes, `height` rows) between host
/// and device memory on `stream`.
pub(crate) struct Copy2d {
    pub host: *mut u8,
    pub host_pitch: usize,
    pub device: DevicePtr,
    pub device_pitch: usize,
    pub width: usize,
    pub height: usize,
}

/// Enqueues `c` host -> device (`to_device`) or device -> host.
///
/// # Safety
/// `c.host` must be valid for `host_pitch * (height - 1) + width` bytes
/// (writable for device -> host) until the copy completes, and `c.device`
/// must address as many bytes of device memory in the current context.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn copy_2d(c: &Copy2d, to_device: bool, stream: RawStream) -> Result<()> {
    let host_t = sys::CUmemorytype::CU_MEMORYTYPE_HOST;
    let dev_t = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
    let mut p = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: dev_t,
        srcHost: std::ptr::null(),
        srcDevice: 0,
        srcArray: std::ptr::null_mut(),
        srcPitch: 0,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: dev_t,
        dstHost: std::ptr::null_mut(),
        dstDevice: 0,
        dstArray: std::ptr::null_mut(),
        dstPitch: 0,
        WidthInBytes: c.width,
        Height: c.height,
    };
    if to_device {
        p.srcMemoryType = host_t;
        p.srcHost = c.host as *const _;
        p.srcPitch = c.host_pitch;
        p.dstDevice = c.device;
        p.dstPitch = c.device_pitch;
    } else {
        p.srcDevice = c.device;
        p.srcPitch = c.device_pitch;
        p.dstMemoryType = host_t;
        p.dstHost = c.host as *mut _;
        p.dstPitch = c.host_pitch;
    }
    // SAFETY: the caller guarantees both ranges (see above); the descriptor
    // lives across the call, which copies it.
    call("cuMemcpy2DAsync", || unsafe {
        sys::cuMemcpy2DAsync_v2(&p, stream)
    })
}

/// Enqueues a device-to-device 2D copy (`width` bytes per row, `height`
/// rows) on `stream`.
///
/// # Safety
/// Both ranges (`pitch * (height - 1) + width` bytes from each pointer)
/// must be device memory of the current context, the source readable and
/// the destination writable, until the copy completes.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn copy_2d_device(
    src: DevicePtr,
    src_pitch: usize,
    dst: DevicePtr,
    dst_pitch: usize,
    width: usize,
    height: usize,
    stream: RawStream,
) -> Result<()> {
    let dev_t = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
    let p = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: dev_t,
        srcHost: std::ptr::null(),
        srcDevice: src,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: dev_t,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: height,
    };
    // SAFETY: the caller guarantees both ranges; the descriptor lives
    // across the call, which copies it.
    call("cuMemcpy2DAsync", || unsafe {
        sys::cuMemcpy2DAsync_v2(&p, stream)
    })
}

/// Whether host memory at `ptr` is page-locked (registered or allocated by
/// CUDA): async copies from it read it later, so the caller must wait.
/// The caller makes a context current first (see [`Device::enter`]).
pub fn is_page_locked(ptr: *const u8) -> bool {
    let mut kind: u32 = 0;
    // SAFETY: the driver only looks the address up in its tables and
    // writes one u32; pageable memory yields an error, not a write.
    call("cuPointerGetAttribute", || unsafe {
        sys::cuPointerGetAttribute(
            (&mut kind as *mut u32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            ptr as u64,
        )
    })
    .is_ok()
}
