//! `CuframesSubscriber`: the seed's subscriber, plus iteration, `async for`,
//! real drop and occupancy counters.

use crate::enums::{PyPixelFormat, PySubscriberMode};
use crate::errors::{raise, IntoPy};
use crate::frame::{Held, PyFrame};
use cuframes::{
    ErrorCode, FrameLayout, MemoryKind, Mode, Monitor, Subscriber, SubscriberOptions,
    SubscriberStats,
};
use cuframes_cuda::{CudaSubscriber, CudaSubscriberOptions, RawStream};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A subscriber of a host-memory or a GPU-memory stream.
enum Reader {
    Host(Subscriber),
    Cuda(Box<CudaSubscriber>),
}

impl Reader {
    /// Connects with the backend the stream's memory needs.
    fn connect(
        key: &str,
        name: &str,
        mode: Mode,
        options: SubscriberOptions,
        cuda_device: Option<u32>,
        stream: usize,
    ) -> cuframes::Result<Self> {
        match Subscriber::connect(key, name, mode, options.clone()) {
            Err(e) if e.code() == ErrorCode::Incompatible && on_gpu(key) => {
                let options = CudaSubscriberOptions {
                    ring: options,
                    device: cuda_device,
                };
                let mut sub = CudaSubscriber::connect(key, name, mode, options)?;
                // SAFETY: the caller vouches for the handle being a live
                // stream of the publisher's device, as the seed's API did.
                unsafe { sub.set_consumer_stream(stream as RawStream) };
                Ok(Reader::Cuda(Box::new(sub)))
            }
            r => r.map(Reader::Host),
        }
    }

    fn host(&self) -> &Subscriber {
        match self {
            Reader::Host(s) => s,
            Reader::Cuda(s) => s.host(),
        }
    }

    fn next(&mut self, timeout: Duration, stop: impl Fn() -> bool) -> cuframes::Result<Held> {
        Ok(match self {
            Reader::Host(s) => Held::Host(Arc::new(s.next_frame_unless(timeout, stop)?)),
            Reader::Cuda(s) => Held::Cuda(Arc::new(s.next_frame_unless(timeout, stop)?)),
        })
    }

    fn try_next(&mut self) -> cuframes::Result<Option<Held>> {
        Ok(match self {
            Reader::Host(s) => s.try_next()?.map(|f| Held::Host(Arc::new(f))),
            Reader::Cuda(s) => s.try_next()?.map(|f| Held::Cuda(Arc::new(f))),
        })
    }

    fn device(&self) -> Option<u32> {
        match self {
            Reader::Host(_) => None,
            Reader::Cuda(s) => Some(s.device()),
        }
    }
}

/// Whether stream `key` keeps its frames in GPU memory.
fn on_gpu(key: &str) -> bool {
    cuframes::stream_status(key).is_ok_and(|s| s.info.memory != MemoryKind::Host)
}

/// Reads frames of one stream.
///
/// Thread-safety: every method may be called from any thread. Calls that
/// take a frame (`next_frame`, `try_next`, iteration) are serialised: a
/// second thread waits for the first. Counters and `close()` never wait
/// for a pending `next_frame`; `close()` makes it return promptly with
/// `CuframesClosedError`. Frames may be released from any thread and stay
/// valid after the subscriber is closed.
#[pyclass(name = "CuframesSubscriber", module = "cuframes._native", frozen)]
pub struct PySubscriber {
    sub: Mutex<Option<Reader>>,
    monitor: Mutex<Option<Monitor>>,
    closing: AtomicBool,
    local: Mutex<SubscriberStats>,
    key: String,
    name: String,
    mode: PySubscriberMode,
    cuda_device: Option<u32>,
    consumer_stream: usize,
    layout: FrameLayout,
}

/// A CUDA stream handle from an int, a `torch.cuda.Stream` / `cupy` stream
/// (`.cuda_stream` / `.ptr`), or the `__cuda_stream__` protocol.
pub fn stream_handle(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    if obj.is_none() {
        return Ok(0);
    }
    if let Ok(v) = obj.extract::<usize>() {
        return Ok(v);
    }
    if let Ok(proto) = obj.call_method0("__cuda_stream__") {
        if let Ok((_, h)) = proto.extract::<(i64, usize)>() {
            return Ok(h);
        }
    }
    for attr in ["cuda_stream", "ptr"] {
        if let Ok(v) = obj.getattr(attr).and_then(|v| v.extract::<usize>()) {
            return Ok(v);
        }
    }
    Err(raise(
        ErrorCode::InvalidArgument,
        "consumer_stream must be an int (cudaStream_t) or a CUDA stream object",
    ))
}

impl PySubscriber {
    /// Runs `f` on the open subscriber (GIL released), then refreshes the
    /// local counters.
    fn with_sub<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Reader, &AtomicBool) -> cuframes::Result<T> + Send,
    ) -> PyResult<T> {
        // Errors become Python exceptions only after the lock is dropped
        // and the GIL is back: taking the GIL while holding the lock could
        // deadlock against a thread that holds the GIL and wants the lock.
        py.detach(|| {
            let mut guard = self.sub.lock().unwrap_or_else(|p| p.into_inner());
            if self.closing.load(Ordering::Acquire) {
                guard.take();
            }
            let Some(sub) = guard.as_mut() else {
                return Err(cuframes::Error::new(
                    ErrorCode::Closed,
                    "the subscriber was closed",
                ));
            };
            let r = f(sub, &self.closing);
            *self.local.lock().unwrap_or_else(|p| p.into_inner()) = sub.host().stats();
            if self.closing.load(Ordering::Acquire) {
                guard.take();
            }
            r
        })
        .py()
    }

    fn snapshot(&self) -> SubscriberStats {
        let local = *self.local.lock().unwrap_or_else(|p| p.into_inner());
        match &*self.monitor.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(m) => m.complete(local),
            None => local,
        }
    }

    fn deliver(held: Held, sub: &Reader) -> PyFrame {
        PyFrame::new(held, sub.host().stats().last_latency_ns)
    }
}

#[pymethods]
impl PySubscriber {
    /// Connects to stream `key` as `consumer_name`, waiting up to
    /// `connect_timeout_ms` for it to appear (GIL released meanwhile).
    ///
    /// `cuda_device` and `consumer_stream` matter for streams in GPU memory
    /// only: `cuda_device=None` finds the publisher's GPU (by UUID, so it
    /// works whatever `CUDA_VISIBLE_DEVICES` says); `consumer_stream` is the
    /// stream frames are ordered on (an int handle or a torch/CuPy stream). `max_held` is how many frames (and array views of them) may be
    /// held at once.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, consumer_name, mode=PySubscriberMode::NEWEST_ONLY, cuda_device=None, connect_timeout_ms=2000, consumer_stream=None, max_held=1))]
    fn new(
        py: Python<'_>,
        key: &str,
        consumer_name: &str,
        mode: PySubscriberMode,
        cuda_device: Option<u32>,
        connect_timeout_ms: u64,
        consumer_stream: Option<&Bound<'_, PyAny>>,
        max_held: u32,
    ) -> PyResult<Self> {
        let consumer_stream = consumer_stream.map_or(Ok(0), stream_handle)?;
        let options = SubscriberOptions {
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            max_held,
            ..Default::default()
        };
        let sub = py
            .detach(|| {
                Reader::connect(
                    key,
                    consumer_name,
                    mode.into(),
                    options,
                    cuda_device,
                    consumer_stream,
                )
            })
            .py()?;
        let cuda_device = sub.device().or(cuda_device);
        Ok(Self {
            layout: *sub.host().layout(),
            monitor: Mutex::new(Some(sub.host().monitor())),
            local: Mutex::new(sub.host().stats()),
            sub: Mutex::new(Some(sub)),
            closing: AtomicBool::new(false),
            key: key.to_owned(),
            name: consumer_name.to_owned(),
            mode,
            cuda_device,
            consumer_stream,
        })
    }

    /// Waits up to `timeout_ms` for the next frame (GIL released). Raises
    /// `CuframesTimeoutError`, `CuframesClosedError` (stream closed and
    /// drained, or subscriber closed), `CuframesPublisherGoneError`,
    /// `CuframesCapacityError` (already holding `max_held` frames).
    #[pyo3(signature = (timeout_ms=1000))]
    fn next_frame(&self, py: Python<'_>, timeout_ms: u64) -> PyResult<PyFrame> {
        let timeout = Duration::from_millis(timeout_ms);
        self.with_sub(py, |sub, closing| {
            let f = sub.next(timeout, || closing.load(Ordering::Acquire))?;
            Ok(Self::deliver(f, sub))
        })
    }

    /// The next frame if one is ready now, else `None`.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<PyFrame>> {
        self.with_sub(py, |sub, _| {
            let f = sub.try_next()?;
            Ok(f.map(|f| Self::deliver(f, sub)))
        })
    }

    /// Leaves the stream. Idempotent; a `next_frame` waiting in another
    /// thread returns with `CuframesClosedError`. Frames still held stay
    /// valid until released.
    fn close(&self, py: Python<'_>) {
        self.closing.store(true, Ordering::Release);
        // A pending wait sees `closing` within its liveness interval and
        // gives the lock back; wait for it without the GIL.
        py.detach(|| {
            let reader = self.sub.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(reader);
        });
        self.monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Iteration waits as long as it takes; it ends when the stream closes
    /// (or the subscriber is closed) and raises other errors.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyFrame>> {
        loop {
            match self.next_frame(py, 200) {
                Ok(f) => return Ok(Some(f)),
                Err(e) if is_code(py, &e, ErrorCode::Timeout) => py.check_signals()?,
                Err(e) if is_code(py, &e, ErrorCode::Closed) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// `async for frame in subscriber`: waits in a worker thread, never on
    /// the event loop.
    fn __aiter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("cuframes._aio")?
            .getattr("FrameStream")?
            .call1((slf,))
    }

    #[getter]
    fn key(&self) -> &str {
        &self.key
    }
    #[getter]
    fn consumer_name(&self) -> &str {
        &self.name
    }
    #[getter]
    fn mode(&self) -> PySubscriberMode {
        self.mode
    }
    /// The GPU of a GPU-memory stream (`None` for host-memory streams
    /// unless one was asked for).
    #[getter]
    fn cuda_device(&self) -> Option<u32> {
        self.cuda_device
    }
    /// The CUDA stream frames are ordered on (0: the default stream).
    #[getter]
    fn consumer_stream(&self) -> usize {
        self.consumer_stream
    }
    #[getter]
    fn format(&self) -> PyPixelFormat {
        self.layout
            .pixel_format()
            .expect("a connected stream has a valid format")
            .into()
    }
    #[getter]
    fn width(&self) -> u32 {
        self.layout.width
    }
    #[getter]
    fn height(&self) -> u32 {
        self.layout.height
    }

    /// Frames handed out.
    #[getter]
    fn frames_received(&self) -> u64 {
        self.snapshot().frames_received
    }
    /// `next_frame` calls that timed out.
    #[getter]
    fn timeouts(&self) -> u64 {
        self.snapshot().timeouts
    }
    /// Calls that failed otherwise.
    #[getter]
    fn errors(&self) -> u64 {
        self.snapshot().errors
    }
    /// Seq of the last frame (0: none yet).
    #[getter]
    fn last_seq(&self) -> u64 {
        self.snapshot().last_seq
    }
    /// Times the seq jumped by more than one.
    #[getter]
    fn gap_count(&self) -> u64 {
        self.snapshot().gap_count
    }
    /// PTS of the last frame.
    #[getter]
    fn last_frame_pts_ns(&self) -> i64 {
        self.snapshot().last_frame_pts_ns
    }
    /// Frames lost (QUEUE under DROP_OLDEST) or skipped (NEWEST_ONLY), as
    /// counted in shared memory by the publisher.
    #[getter]
    fn dropped(&self) -> u64 {
        self.snapshot().dropped
    }
    /// Slots of the ring held or still needed, read from shared memory.
    #[getter]
    fn ring_occupancy(&self) -> u32 {
        self.snapshot().ring_occupancy
    }

    /// All counters as a dict (for health reports).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.snapshot();
        let d = PyDict::new(py);
        d.set_item("frames_received", s.frames_received)?;
        d.set_item("timeouts", s.timeouts)?;
        d.set_item("errors", s.errors)?;
        d.set_item("last_seq", s.last_seq)?;
        d.set_item("gap_count", s.gap_count)?;
        d.set_item("last_frame_pts_ns", s.last_frame_pts_ns)?;
        d.set_item("last_latency_ns", s.last_latency_ns)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("ring_occupancy", s.ring_occupancy)?;
        d.set_item("slot_count", s.slot_count)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "CuframesSubscriber(key={:?}, consumer_name={:?}, mode={:?}{})",
            self.key,
            self.name,
            self.mode,
            if self.closed() { ", closed" } else { "" }
        )
    }
}

/// Whether `e` is the cuframes exception for `code`.
pub fn is_code(py: Python<'_>, e: &PyErr, code: ErrorCode) -> bool {
    e.value(py)
        .getattr("code")
        .and_then(|c| c.extract::<i32>())
        .is_ok_and(|c| c == code as i32)
}
