//! The cuframes-cuda peer: a [`CudaPublisher`] process writing each frame
//! in place on the GPU and [`CudaSubscriber`] processes that take it on
//! their own stream, synchronise that stream and release the frame; plus
//! what the harness needs to know about the GPU (whether there is one, and
//! whether it is the driver simulator).
//!
//! Raw driver calls (device name, primary context, the memset, a stream
//! and its synchronisation) go through cudarc's `sys`, only after
//! [`cuframes_cuda::driver_version`] has loaded the driver (cudarc's loader
//! panics when `libcuda.so` is missing).

use crate::peers::{publish, ready, receive, ring_options, wait_connected, Res, Sink, Taken};
use crate::proto::{now_ns, HEADER};
use crate::spec::ChildSpec;
use cudarc::driver::sys;
use cuframes_cuda::{CudaPublisher, CudaPublisherOptions, CudaSubscriber, CudaSubscriberOptions};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::Duration;

/// The note on every figure measured on the driver simulator (the row's
/// status is `sim`, never `ok`).
pub const SIM_NOTE: &str = "simulator: call overhead only, not a GPU figure";

/// The GPU the CUDA peers would run on (device 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// `cuDeviceGetName` of device 0.
    pub name: String,
    /// The cuframes driver simulator (`cuframes-sim ...`, or
    /// `CUFRAMES_GPU_BACKEND=sim`): its figures time call overhead, not a
    /// GPU.
    pub sim: bool,
}

/// Device 0 of this machine's CUDA driver, or why there is none (no
/// `libcuda.so`, `cuInit` failed, no device). Probed once per process.
pub fn probe() -> Result<Gpu, String> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        let count = cuframes_cuda::device_count().map_err(|e| e.message().to_owned())?;
        if count == 0 {
            return Err("the CUDA driver sees no device".into());
        }
        let name = cuframes_cuda::device_name(0).map_err(|e| e.message().to_owned())?;
        let sim = name.starts_with("cuframes-sim")
            || std::env::var("CUFRAMES_GPU_BACKEND").as_deref() == Ok("sim");
        Ok(Gpu { name, sim })
    })
    .clone()
}

/// Runs one raw driver call; an error code (or a symbol the driver lacks,
/// which cudarc reports by panicking) becomes a message naming the call.
fn check(what: &str, f: impl FnOnce() -> sys::CUresult) -> Res<()> {
    // Nothing below may touch cudarc's loader unless the driver loaded.
    cuframes_cuda::driver_version().map_err(|e| e.message().to_owned())?;
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(sys::CUresult::CUDA_SUCCESS) => Ok(()),
        Ok(code) => {
            let mut p: *const std::ffi::c_char = std::ptr::null();
            // SAFETY: the driver stores a pointer to a static NUL-terminated
            // string (or nothing) for any code; it is read only when set.
            let named = unsafe { sys::cuGetErrorName(code, &mut p) };
            let name = if named == sys::CUresult::CUDA_SUCCESS && !p.is_null() {
                // SAFETY: non-null and NUL-terminated, owned by the driver.
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_string_lossy()
                    .into_owned()
            } else {
                format!("{code:?}")
            };
            Err(format!("{what}: {name}"))
        }
        Err(_) => Err(format!("{what}: the CUDA driver cannot serve this call")),
    }
}

fn device(ordinal: u32) -> Res<sys::CUdevice> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: writes one CUdevice through a valid pointer.
    check("cuDeviceGet", || unsafe {
        sys::cuDeviceGet(&mut dev, ordinal as i32)
    })?;
    Ok(dev)
}

/// The device's primary context (the one cuframes-cuda uses), retained
/// and current on this thread while it lives, so raw calls on the
/// library's streams work.
struct Context(sys::CUdevice);

impl Context {
    fn enter(ordinal: u32) -> Res<Self> {
        let dev = device(ordinal)?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: writes one context handle through a valid pointer.
        check("cuDevicePrimaryCtxRetain", || unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev)
        })?;
        let me = Self(dev);
        // SAFETY: `ctx` is the primary context just retained; `me` holds
        // it until after it stops being current (Drop).
        check("cuCtxSetCurrent", || unsafe { sys::cuCtxSetCurrent(ctx) })?;
        Ok(me)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: unbinds the context from this thread, then gives back
        // the retain made in `enter`.
        let _ = check("cuCtxSetCurrent", || unsafe {
            sys::cuCtxSetCurrent(std::ptr::null_mut())
        });
        // SAFETY: as above: one release for the one retain.
        let _ = check("cuDevicePrimaryCtxRelease", || unsafe {
            sys::cuDevicePrimaryCtxRelease_v2(self.0)
        });
    }
}

/// A non-blocking stream of the current context, destroyed on drop.
struct Stream(sys::CUstream);

impl Stream {
    fn new(_ctx: &Context) -> Res<Self> {
        let mut s: sys::CUstream = std::ptr::null_mut();
        // SAFETY: writes one stream handle; the context is current (`_ctx`).
        check("cuStreamCreate", || unsafe {
            sys::cuStreamCreate(
                &mut s,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as std::ffi::c_uint,
            )
        })?;
        Ok(Self(s))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: our own stream, no longer used by anything (the
        // subscriber that used it is dropped first).
        let _ = check("cuStreamDestroy", || unsafe {
            sys::cuStreamDestroy_v2(self.0)
        });
    }
}

/// An event of the current context (no timing), destroyed on drop.
struct Event(sys::CUevent);

impl Event {
    fn new(_ctx: &Context) -> Res<Self> {
        let mut e: sys::CUevent = std::ptr::null_mut();
        // SAFETY: writes one event handle; the context is current (`_ctx`).
        check("cuEventCreate", || unsafe {
            sys::cuEventCreate(
                &mut e,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as std::ffi::c_uint,
            )
        })?;
        Ok(Self(e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: our own event; destroying one with work pending is
        // allowed (the driver frees it once the work completes).
        let _ = check("cuEventDestroy", || unsafe {
            sys::cuEventDestroy_v2(self.0)
        });
    }
}

/// Keeps a publisher at most `depth` frames ahead of its GPU, as a
/// decoder with that many output surfaces is: an event per frame, and the
/// one recorded `depth` frames ago is waited for before it is reused.
/// Without it an unpaced loop would measure how fast the CPU enqueues
/// work the GPU has not done.
struct Pipeline {
    events: Vec<Event>,
    next: usize,
    full: bool,
}

impl Pipeline {
    fn new(ctx: &Context, depth: usize) -> Res<Self> {
        Ok(Self {
            events: (0..depth.max(1))
                .map(|_| Event::new(ctx))
                .collect::<Res<_>>()?,
            next: 0,
            full: false,
        })
    }

    /// After a frame's work was enqueued on `stream`.
    fn mark(&mut self, stream: sys::CUstream) -> Res<()> {
        let e = self.events[self.next].0;
        if self.full {
            // SAFETY: our event, recorded `depth` frames ago.
            check("cuEventSynchronize", || unsafe {
                sys::cuEventSynchronize(e)
            })?;
        }
        // SAFETY: our event and the publisher's live stream, both of the
        // current context.
        check("cuEventRecord", || unsafe { sys::cuEventRecord(e, stream) })?;
        self.next = (self.next + 1) % self.events.len();
        self.full |= self.next == 0;
        Ok(())
    }
}

fn synchronize(stream: sys::CUstream) -> Res<()> {
    // SAFETY: a live stream of the current context.
    check("cuStreamSynchronize", || unsafe {
        sys::cuStreamSynchronize(stream)
    })
}

/// The publisher: every frame is a loan, a [`HEADER`]-byte device memset
/// on the loan's stream (the frame's producer writing in place, as a
/// decoder would; nothing is uploaded from the host), and a commit; at
/// most a ring's worth of frames ahead of the GPU ([`Pipeline`]).
struct CudaPub {
    // Dropped first: the publisher finishes its stream and closes the ring
    // while the context is still ours.
    publisher: CudaPublisher,
    pipeline: Pipeline,
    _ctx: Context,
}

impl Sink for CudaPub {
    fn wait_subscribers(&mut self, n: usize) -> Res<()> {
        wait_connected(n, || self.publisher.host().stats().active().count())
    }

    fn publish(&mut self, seq: u64, phase: u64) -> Res<()> {
        let lease = self.publisher.loan().map_err(|e| format!("loan: {e}"))?;
        let (ptr, stream) = (lease.plane(0).ptr, lease.stream());
        // SAFETY: the first HEADER bytes of plane 0 of the loaned slot, in
        // our allocation; `stream` is the loan's stream (it already waits
        // for every reader of the slot), of the current primary context.
        check("cuMemsetD8Async", || unsafe {
            sys::cuMemsetD8Async(ptr, seq as u8, HEADER, stream)
        })?;
        // The phase travels as the pts: the subscriber reads no bytes.
        lease
            .commit(phase as i64)
            .map_err(|e| format!("commit: {e}"))?;
        self.pipeline.mark(stream)
    }
}

/// The publisher process: 1080p NV12 (planes pitched by cuframes-cuda for
/// NVDEC/NPP) in one device allocation, export mode chosen by the library.
/// Its `result` line says which export it used.
pub(crate) fn publisher(spec: &ChildSpec) -> Res<String> {
    let c = &spec.case;
    let options = CudaPublisherOptions {
        ring: ring_options(c),
        ..Default::default()
    };
    let publisher = CudaPublisher::create(
        &spec.key,
        c.workload.format(),
        c.workload.width,
        c.workload.height,
        options,
    )
    .map_err(|e| format!("create: {e}"))?;
    let ctx = Context::enter(publisher.device())?;
    let pipeline = Pipeline::new(&ctx, crate::spec::ring_slots(c.subscribers) as usize)?;
    let export = publisher.export_mode().name();
    ready();
    let line = publish(
        spec,
        CudaPub {
            publisher,
            pipeline,
            _ctx: ctx,
        },
    )?;
    Ok(format!("{line} export={export}"))
}

/// A subscriber process: frames are ordered on a stream of its own; each
/// is taken (`next_frame` makes the stream wait for the publisher's
/// writes), the stream is synchronised (the frame is usable there: the
/// GPU-side ordering is in the figure), then released. The latency is
/// from the frame's commit to the end of that synchronisation.
pub(crate) fn subscriber(spec: &ChildSpec) -> Res<String> {
    let c = &spec.case;
    let options = CudaSubscriberOptions {
        ring: cuframes::SubscriberOptions {
            connect_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        device: None,
    };
    let name = format!("bench{}", spec.idx);
    let mut sub = CudaSubscriber::connect(&spec.key, &name, c.mode.cuframes(), options)
        .map_err(|e| format!("connect: {e}"))?;
    let ctx = Context::enter(sub.device())?;
    let stream = Stream::new(&ctx)?;
    // SAFETY: a live stream of the device's primary context, destroyed
    // only after `sub` (and every frame, released in the loop) is gone.
    unsafe { sub.set_consumer_stream(stream.0) };
    let report = receive(spec.idx, || {
        let frame = match sub.next_frame(Duration::from_secs(20)) {
            Ok(f) => f,
            Err(e) if e.code() == cuframes::ErrorCode::Closed => return Ok(None),
            Err(e) => return Err(format!("next_frame: {e}")),
        };
        synchronize(frame.consumer_stream())?;
        let now = now_ns();
        let taken = Taken::new(
            frame.seq(),
            frame.pts_ns() as u64,
            now.saturating_sub(frame.as_ref().commit_ns()),
            now,
        );
        frame.release();
        Ok(Some(taken))
    });
    drop(sub);
    drop(stream);
    drop(ctx);
    report
}
