//! `CuframesSubscriber`: the seed's subscriber, plus iteration, `async for`,
//! real drop and occupancy counters. Its connection, waits, counters and
//! `max_held` bookkeeping are a [`Session`], which `PacketSubscriber`
//! (`packets.rs`) shares: both are generic over the std subscriber
//! [`Handle`] they drive.

use crate::enums::{PyPixelFormat, PySubscriberMode};
use crate::errors::{raise, to_py};
use crate::frame::{Held, PyFrame};
use crate::holds::{self, Holds};
use cuframes::{
    ErrorCode, FrameLayout, MemoryKind, Mode, Monitor, Subscriber, SubscriberOptions,
    SubscriberStats,
};
use cuframes_cuda::{CudaSubscriber, CudaSubscriberOptions, RawStream};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

/// `max_held` when Python code does not say: the frame just taken plus the
/// previous one, whose views (`y = frame.y`, a tensor from
/// `frame.dlpack_y()`) the usual loop still holds while it asks for the
/// next frame.
pub const DEFAULT_MAX_HELD: u32 = 2;

/// How long internal waits last (iteration, `async for`, callbacks): short,
/// so that signals, `stop()` and cancellation are seen promptly.
const SLICE_MS: u64 = 200;

/// A subscriber of a host-memory or a GPU-memory stream.
enum Reader {
    /// A host-memory stream.
    Host(Subscriber),
    /// A GPU-memory stream.
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

    /// The ring-level subscriber (counters, layout).
    fn host(&self) -> &Subscriber {
        match self {
            Reader::Host(s) => s,
            Reader::Cuda(s) => s.host(),
        }
    }

    /// The GPU of a GPU-memory stream.
    fn device(&self) -> Option<u32> {
        match self {
            Reader::Host(_) => None,
            Reader::Cuda(s) => Some(s.device()),
        }
    }
}

impl Handle for Reader {
    type Item = Held;
    const WHO: &'static str = "subscriber";
    const NEXT: &'static str = "next_frame()";
    const HOLDER: &'static str = "frame";
    const FIX: &'static str = "release frames you are done with (frame.release() or `with \
                               frame:`) and drop or rebind their views (`del y`, `t = None`) \
                               before the next next_frame(); copy what must live longer \
                               (numpy.array(frame.y), tensor.clone())";
    const STATS: [&'static str; 2] = ["frames_received", "last_frame_pts_ns"];

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

    fn try_is_cheap(&self) -> bool {
        matches!(self, Reader::Host(_))
    }

    fn stats(&self) -> SubscriberStats {
        self.host().stats()
    }

    fn stamp(item: &Held) -> Option<Stamp> {
        let f = item.host();
        Some(Stamp {
            seq: f.seq(),
            pts_ns: f.pts_ns(),
            commit_ns: f.commit_ns(),
        })
    }

    fn monitor(&self) -> Option<Monitor> {
        Some(self.host().monitor())
    }

    fn budget_message(key: &str, _e: &cuframes::Error, asked: u32, defaulted: bool) -> String {
        hold_budget_message(key, asked, defaulted)
    }
}

/// Whether stream `key` keeps its frames in GPU memory.
fn on_gpu(key: &str) -> bool {
    cuframes::stream_status(key).is_ok_and(|s| s.info.memory != MemoryKind::Host)
}

/// Whether `e` is the publisher's refusal of a `max_held` its ring cannot
/// honour (`slot_count >= sum(max_held) + 2`), rather than a full table of
/// subscriber records.
fn is_hold_budget(e: &cuframes::Error) -> bool {
    e.code() == ErrorCode::Capacity && e.to_string().contains("max_held")
}

/// The message for a refused `max_held`: the ring's size, who is there, and
/// how many slots would do.
fn hold_budget_message(key: &str, asked: u32, defaulted: bool) -> String {
    let (slots, subscribers) = cuframes::stream_status(key)
        .map_or((0, 0), |s| (s.stats.slot_count, s.stats.active().count()));
    let suggest = slots + asked;
    let why = if defaulted {
        format!(
            "This subscriber asked for max_held={asked} (the Python default: the previous \
             frame's views may live on while next_frame() takes the next one), and not even \
             max_held=1 fits. "
        )
    } else {
        format!("This subscriber asked for max_held={asked}. ")
    };
    format!(
        "stream {key:?} has no room for another subscriber: its ring has {slots} slots, which \
         must cover every subscriber's max_held plus 2 (slot_count >= sum(max_held) + 2), and \
         {subscribers} subscriber(s) are connected. {why}Start the publisher with more slots, \
         e.g. {suggest} (`cuframes publish --slots {suggest}`, `cuframes.Publisher(..., \
         slots={suggest})`){}.",
        if defaulted {
            ""
        } else {
            ", or ask for a smaller max_held"
        }
    )
}

/// What a subscriber's own counters record of a frame it hands out.
pub struct Stamp {
    /// The frame's seq.
    seq: u64,
    /// Its pts.
    pts_ns: i64,
    /// Its commit time.
    commit_ns: u64,
}

/// What a take without waiting found.
enum Ready<T> {
    /// An item, or the error the take ended with.
    Taken(cuframes::Result<T>),
    /// Nothing ready yet.
    Empty,
    /// The handle is in use by another thread's take, the subscriber is
    /// closing or closed, or its take is not cheap (a GPU reader): the
    /// take must go the usual way (GIL released).
    Busy,
}

/// A std subscriber of either kind (a frame [`Reader`], a
/// `cuframes::PacketSubscriber`), as a [`Session`] drives it, with the
/// words its messages use.
pub trait Handle: Send {
    /// What it hands out.
    type Item: holds::Item;
    /// What the fallback warning calls the subscriber.
    const WHO: &'static str;
    /// The call that takes the next one (`"next_frame()"`).
    const NEXT: &'static str;
    /// What the capacity error says holds an item besides its views.
    const HOLDER: &'static str;
    /// The capacity error's advice, before "or subscribe with a larger
    /// max_held".
    const FIX: &'static str;
    /// `stats()` keys of the `frames_received` and `last_frame_pts_ns`
    /// counters.
    const STATS: [&'static str; 2];

    /// Waits up to `timeout` for the next item, giving up when `stop()`.
    fn next(&mut self, timeout: Duration, stop: impl Fn() -> bool) -> cuframes::Result<Self::Item>;
    /// The next item if one is ready.
    fn try_next(&mut self) -> cuframes::Result<Option<Self::Item>>;
    /// Whether [`try_next`](Self::try_next) is a few atomic operations on
    /// host memory, cheap enough to run without releasing the GIL (a GPU
    /// reader's enters a CUDA context and orders streams: not that).
    fn try_is_cheap(&self) -> bool {
        true
    }
    /// The counters, shared ones read now.
    fn stats(&self) -> SubscriberStats;
    /// What the handle's own counters record of an item it handed out,
    /// where the session may count it without [`stats`](Self::stats).
    fn stamp(_item: &Self::Item) -> Option<Stamp> {
        None
    }
    /// Reads the shared counters while a wait holds the handle, where the
    /// handle offers that.
    fn monitor(&self) -> Option<Monitor> {
        None
    }
    /// The message for a refused `max_held` (`e`), asked for or
    /// `defaulted`. Runs without the GIL.
    fn budget_message(key: &str, e: &cuframes::Error, asked: u32, defaulted: bool) -> String;
}

/// What frame and packet subscribers share: the handle until closed, the
/// counters, the holds of what it handed out and its `max_held`.
///
/// Thread-safety: every method may be called from any thread. Calls that
/// take an item are serialised: a second thread waits for the first.
/// Counters and `close()` never wait for a pending take; `close()` makes
/// it return promptly with `CuframesClosedError`.
pub struct Session<H: Handle> {
    /// The handle, until closed.
    sub: Mutex<Option<H>>,
    /// Reads the shared-memory counters while a wait holds `sub`.
    monitor: Mutex<Option<Monitor>>,
    /// Set by `close()`: pending and later waits give up.
    closing: AtomicBool,
    /// The handle's own counters as of its last call.
    local: Mutex<SubscriberStats>,
    /// Timeouts the caller asked for that expired (internal slices of
    /// iteration and callbacks do not count).
    timeouts: AtomicU64,
    /// The holders of this subscriber's items.
    holds: Arc<Holds>,
    /// The effective `max_held`.
    max_held: u32,
    /// Whether `max_held` fell back from the default to 1.
    fell_back: bool,
    /// The stream key.
    key: String,
    /// The consumer name.
    name: String,
    /// How it reads.
    mode: PySubscriberMode,
}

/// The connection options a subscriber was asked for.
pub struct Connect<'a> {
    /// The stream key.
    pub key: &'a str,
    /// The consumer name.
    pub name: &'a str,
    /// How it reads.
    pub mode: PySubscriberMode,
    /// How long to wait for the stream to appear.
    pub connect_timeout_ms: u64,
    /// `max_held=` (`None`: the default, which may fall back to 1).
    pub max_held: Option<u32>,
    /// Whether a segment another user owns is accepted.
    pub allow_other_owner: bool,
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
    /// The connection.
    session: Session<Reader>,
    /// The GPU of a GPU-memory stream.
    cuda_device: Option<u32>,
    /// The CUDA stream GPU frames are ordered on.
    consumer_stream: usize,
    /// The frames' layout.
    layout: FrameLayout,
}

// `CU_STREAM_PER_THREAD` (`cudaStreamPerThread`): a different stream on
// every thread.
use cuframes_cuda::raw::PER_THREAD_STREAM;

/// The consumer stream from `consumer_stream=`: one stream that every
/// frame's wait, copy and release is ordered on, whichever thread takes,
/// reads or releases the frame. The per-thread default stream names
/// another stream on each thread (a frame taken on one thread and read or
/// released on another would be ordered on neither), so it is refused
/// here; DLPack's `stream=2` is the way to read on it, resolved on the
/// thread that exports.
fn consumer_stream_handle(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    let handle = stream_handle(obj)?;
    if handle == PER_THREAD_STREAM {
        return Err(raise(
            ErrorCode::InvalidArgument,
            "consumer_stream=2 is the per-thread default stream (cudaStreamPerThread), a \
             different stream on every thread: frames are taken, read and released on any \
             thread, so it cannot order them. Pass None or 1 (the legacy default stream) or a \
             stream you created, and read on the per-thread stream through DLPack: \
             __dlpack__(stream=2) orders the calling thread's stream when it is called",
        ));
    }
    Ok(handle)
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

impl<H: Handle> Session<H> {
    /// Connects with `connect` (GIL released) as `c` asks, falling back
    /// from the default `max_held` to 1 (with a warning) when the ring has
    /// no room for more; `info` reads what the caller keeps of the handle.
    pub fn connect<I>(
        py: Python<'_>,
        c: &Connect<'_>,
        connect: impl Fn(SubscriberOptions) -> cuframes::Result<H> + Sync,
        info: impl FnOnce(&H) -> I,
    ) -> PyResult<(Self, I)> {
        let with_held = |held: u32| {
            connect(SubscriberOptions {
                connect_timeout: Duration::from_millis(c.connect_timeout_ms),
                max_held: held,
                allow_other_owner: c.allow_other_owner,
                ..Default::default()
            })
        };
        let asked = c.max_held.unwrap_or(DEFAULT_MAX_HELD);
        let defaulted = c.max_held.is_none();
        let connected = py.detach(|| match with_held(asked) {
            Err(e) if defaulted && is_hold_budget(&e) => with_held(1).map(|s| (s, 1)),
            r => r.map(|s| (s, asked)),
        });
        let (sub, held) = connected.map_err(|e| {
            if is_hold_budget(&e) {
                let message = py.detach(|| H::budget_message(c.key, &e, asked, defaulted));
                raise(ErrorCode::Capacity, &message)
            } else {
                to_py(e)
            }
        })?;
        let fell_back = held != asked;
        if fell_back {
            let (noun, who, next) = (<H::Item as holds::Item>::NOUN, H::WHO, H::NEXT);
            log::warn!(
                target: "cuframes::python",
                "{who} {:?} of stream {:?} holds at most 1 {noun}, not {asked}: the ring has \
                 no room for more (slot_count >= sum(max_held) + 2). Keeping a {noun}'s views \
                 alive across {next} will raise CuframesCapacityError; start the publisher \
                 with more slots, or pass max_held=1 to silence this warning",
                c.name,
                c.key
            );
        }
        let info = info(&sub);
        let session = Self {
            monitor: Mutex::new(sub.monitor()),
            local: Mutex::new(sub.stats()),
            sub: Mutex::new(Some(sub)),
            closing: AtomicBool::new(false),
            timeouts: AtomicU64::new(0),
            holds: Arc::default(),
            max_held: held,
            fell_back,
            key: c.key.to_owned(),
            name: c.name.to_owned(),
            mode: c.mode,
        };
        Ok((session, info))
    }

    /// Runs `f` on the open handle (GIL released), then refreshes the
    /// local counters; returns what `f` did with the counters as of then.
    /// The error stays a Rust error: it becomes a Python exception only
    /// once the lock is dropped and the GIL is back (taking the GIL while
    /// holding the lock could deadlock against a thread that holds the GIL
    /// and wants the lock).
    fn with_sub<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut H, &AtomicBool) -> cuframes::Result<T> + Send,
    ) -> cuframes::Result<(T, SubscriberStats)> {
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
            let stats = self.refresh(sub);
            if self.closing.load(Ordering::Acquire) {
                guard.take();
            }
            r.map(|t| (t, stats))
        })
    }

    /// Stores the handle's counters as the local ones and returns them.
    fn refresh(&self, sub: &H) -> SubscriberStats {
        let stats = sub.stats();
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        stats
    }

    /// The next item if one is ready now, taken with the GIL held (giving
    /// it up and taking it back costs more than a ready take), with its
    /// latency. Nothing here blocks: the handle's lock is only tried, and
    /// a take without waiting is a few atomic operations on the ring.
    fn take_ready(&self) -> Ready<(H::Item, u64)> {
        let mut guard = match self.sub.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ready::Busy,
        };
        if self.closing.load(Ordering::Acquire) {
            return Ready::Busy;
        }
        let Some(sub) = guard.as_mut().filter(|s| s.try_is_cheap()) else {
            return Ready::Busy;
        };
        match sub.try_next() {
            Ok(None) => Ready::Empty,
            Ok(Some(item)) => {
                let latency = match H::stamp(&item) {
                    Some(stamp) => self.count(&stamp),
                    None => self.refresh(sub).last_latency_ns,
                };
                Ready::Taken(Ok((item, latency)))
            }
            Err(e) => {
                self.refresh(sub);
                Ready::Taken(Err(e))
            }
        }
    }

    /// Counts an item just taken (`stamp`) in the local counters as the
    /// handle counted it in its own (`cuframes::Subscriber` counts a gap
    /// when a seq does not follow the last one; the latency runs from the
    /// commit to the handout), and returns its latency. This keeps the
    /// local counters what [`refresh`](Self::refresh) would make them
    /// without its scan of every subscriber record of the ring, the
    /// dearest part of a take that does not wait. The shared counters
    /// (drops, occupancy) are read when asked for, as ever.
    fn count(&self, stamp: &Stamp) -> u64 {
        let latency = cuframes::now_ns().saturating_sub(stamp.commit_ns);
        let mut s = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if s.last_seq != 0 && stamp.seq != s.last_seq + 1 {
            s.gap_count += 1;
        }
        s.frames_received += 1;
        s.last_seq = stamp.seq;
        s.last_frame_pts_ns = stamp.pts_ns;
        s.last_latency_ns = latency;
        latency
    }

    /// Every counter: read now unless a wait holds the handle; then as of
    /// its last call, completed from shared memory where the handle has a
    /// monitor.
    pub fn snapshot(&self) -> SubscriberStats {
        let live = match self.sub.try_lock() {
            Ok(g) => g.as_ref().map(H::stats),
            Err(TryLockError::Poisoned(p)) => p.into_inner().as_ref().map(H::stats),
            Err(TryLockError::WouldBlock) => None,
        };
        let base = live.unwrap_or_else(|| {
            let local = *self.local.lock().unwrap_or_else(|p| p.into_inner());
            match &*self.monitor.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(m) => m.complete(local),
                None => local,
            }
        });
        SubscriberStats {
            timeouts: self.timeouts.load(Ordering::Relaxed),
            ..base
        }
    }

    /// Waits up to `timeout_ms` for an item; an expired wait counts in
    /// `timeouts` only if `count_timeout`. Returns it with its latency.
    pub fn take(
        &self,
        py: Python<'_>,
        timeout_ms: u64,
        count_timeout: bool,
    ) -> PyResult<(H::Item, u64)> {
        let got = match self.take_ready() {
            Ready::Taken(got) => got,
            Ready::Empty | Ready::Busy => {
                let timeout = Duration::from_millis(timeout_ms);
                self.with_sub(py, |sub, closing| {
                    sub.next(timeout, || closing.load(Ordering::Acquire))
                })
                .map(|(item, stats)| (item, stats.last_latency_ns))
            }
        };
        got.map_err(|e| self.error(py, e, count_timeout))
    }

    /// The next item if one is ready now, with its latency.
    pub fn try_take(&self, py: Python<'_>) -> PyResult<Option<(H::Item, u64)>> {
        let got = match self.take_ready() {
            Ready::Taken(got) => got.map(Some),
            Ready::Empty => Ok(None),
            Ready::Busy => self
                .with_sub(py, |sub, _| sub.try_next())
                .map(|(item, stats)| item.map(|i| (i, stats.last_latency_ns))),
        };
        got.map_err(|e| self.error(py, e, false))
    }

    /// Iteration's next item: waits as long as it takes, in short slices
    /// (nothing counts in `timeouts`); `None` when the stream closes (or
    /// the subscriber is closed).
    pub fn iterate(&self, py: Python<'_>) -> PyResult<Option<(H::Item, u64)>> {
        loop {
            match self.take(py, SLICE_MS, false) {
                Ok(i) => return Ok(Some(i)),
                Err(e) if is_code(py, &e, ErrorCode::Timeout) => py.check_signals()?,
                Err(e) if is_code(py, &e, ErrorCode::Closed) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves the stream. Idempotent; a take waiting in another thread
    /// returns with `CuframesClosedError`.
    pub fn close(&self, py: Python<'_>) {
        self.closing.store(true, Ordering::Release);
        // A pending wait sees `closing` within its liveness interval and
        // gives the lock back; wait for it without the GIL.
        py.detach(|| {
            let reader = self.sub.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(reader);
            self.monitor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        });
    }

    /// Whether `close()` was called.
    pub fn closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// All counters as a dict (for health reports).
    pub fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let [received, last_pts] = H::STATS;
        let s = self.snapshot();
        let d = PyDict::new(py);
        d.set_item(received, s.frames_received)?;
        d.set_item("timeouts", s.timeouts)?;
        d.set_item("errors", s.errors)?;
        d.set_item("last_seq", s.last_seq)?;
        d.set_item("gap_count", s.gap_count)?;
        d.set_item(last_pts, s.last_frame_pts_ns)?;
        d.set_item("last_latency_ns", s.last_latency_ns)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("ring_occupancy", s.ring_occupancy)?;
        d.set_item("slot_count", s.slot_count)?;
        d.set_item("max_held", self.max_held)?;
        Ok(d)
    }

    /// The holders of this subscriber's items.
    pub fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }
    /// The stream key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The consumer name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// How it reads.
    pub fn mode(&self) -> PySubscriberMode {
        self.mode
    }
    /// The effective `max_held`.
    pub fn max_held(&self) -> u32 {
        self.max_held
    }

    /// The Python exception for a failed read.
    fn error(&self, py: Python<'_>, e: cuframes::Error, count_timeout: bool) -> PyErr {
        match e.code() {
            ErrorCode::Timeout => {
                if count_timeout {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                to_py(e)
            }
            ErrorCode::Capacity => raise(ErrorCode::Capacity, &self.capacity_message(py)),
            _ => to_py(e),
        }
    }

    /// Why no further item can be held: which are held, by what, and what
    /// to do.
    fn capacity_message(&self, py: Python<'_>) -> String {
        let noun = <H::Item as holds::Item>::NOUN;
        let mut m = format!(
            "cannot take another {noun}: this subscriber already holds max_held={} {noun}(s), \
             and a {noun} stays held while the {} or any view of it lives, even after \
             release()",
            self.max_held,
            H::HOLDER
        );
        if self.fell_back {
            m.push_str(&format!(
                " (max_held is 1, not the default {DEFAULT_MAX_HELD}: the ring had no room \
                 for {DEFAULT_MAX_HELD} when this subscriber connected)"
            ));
        }
        let report = self.holds.report(py);
        if !report.is_empty() {
            m.push_str(". Held now:");
            for (seq, what) in report {
                m.push_str(&format!("\n  - {noun} seq {seq}: {}", what.join("; ")));
            }
        }
        m.push_str(&format!(
            "\nFix: {}; or subscribe with a larger max_held (the publisher's ring needs \
             slot_count >= sum of every subscriber's max_held + 2).",
            H::FIX
        ));
        m
    }
}

impl PySubscriber {
    /// Wraps a frame just taken, with its latency.
    fn wrap(&self, (held, latency): (Held, u64)) -> PyFrame {
        PyFrame::new(held, latency, self.session.holds().clone())
    }

    /// Calls `cuframes._callback.<class>(self, callback, **kwargs)`.
    fn callback_handle<'py>(
        slf: Bound<'py, Self>,
        class: &str,
        callback: Bound<'py, PyAny>,
        kwargs: &[(&str, Bound<'py, PyAny>)],
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kw = PyDict::new(py);
        for (k, v) in kwargs {
            kw.set_item(k, v)?;
        }
        py.import("cuframes._callback")?
            .getattr(class)?
            .call((slf, callback), Some(&kw))
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
    /// stream frames are ordered on (an int handle or a torch/CuPy stream;
    /// not 2, the per-thread default stream: `CuframesInvalidArgumentError`).
    ///
    /// `max_held` is how many frames (counting the views of each) may be
    /// held at once. `None` (the default) asks for 2 — the frame being
    /// taken plus the previous one's views — and falls back to 1, with a
    /// warning on the `cuframes.python` logger, when the ring has room for
    /// only one more.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (key, consumer_name, mode=PySubscriberMode::NEWEST_ONLY, cuda_device=None, connect_timeout_ms=2000, consumer_stream=None, max_held=None, allow_other_owner=false))]
    fn new(
        py: Python<'_>,
        key: &str,
        consumer_name: &str,
        mode: PySubscriberMode,
        cuda_device: Option<u32>,
        connect_timeout_ms: u64,
        consumer_stream: Option<&Bound<'_, PyAny>>,
        max_held: Option<u32>,
        allow_other_owner: bool,
    ) -> PyResult<Self> {
        let consumer_stream = consumer_stream.map_or(Ok(0), consumer_stream_handle)?;
        let asked = Connect {
            key,
            name: consumer_name,
            mode,
            connect_timeout_ms,
            max_held,
            allow_other_owner,
        };
        let connect = |options| {
            Reader::connect(
                key,
                consumer_name,
                mode.into(),
                options,
                cuda_device,
                consumer_stream,
            )
        };
        let (session, (layout, device)) = Session::connect(py, &asked, connect, |sub: &Reader| {
            (*sub.host().layout(), sub.device())
        })?;
        Ok(Self {
            session,
            layout,
            cuda_device: device.or(cuda_device),
            consumer_stream,
        })
    }

    /// Waits up to `timeout_ms` for the next frame (GIL released). Raises
    /// `CuframesTimeoutError` (counted in `timeouts`), `CuframesClosedError`
    /// (stream closed and drained, or subscriber closed),
    /// `CuframesPublisherGoneError`, `CuframesLaggedError` (a QUEUE reader
    /// evicted for lagging; the next call goes on), `CuframesCapacityError`
    /// (already holding `max_held` frames; the message says which views hold
    /// them).
    #[pyo3(signature = (timeout_ms=1000))]
    fn next_frame(&self, py: Python<'_>, timeout_ms: u64) -> PyResult<PyFrame> {
        Ok(self.wrap(self.session.take(py, timeout_ms, true)?))
    }

    /// `next_frame` for the package's own loops (iteration, `async for`,
    /// callbacks), which wait in short slices: an expired slice counts in
    /// `timeouts` only if `count_timeout`.
    #[pyo3(name = "_next_frame", signature = (timeout_ms, count_timeout=false))]
    fn next_frame_internal(
        &self,
        py: Python<'_>,
        timeout_ms: u64,
        count_timeout: bool,
    ) -> PyResult<PyFrame> {
        Ok(self.wrap(self.session.take(py, timeout_ms, count_timeout)?))
    }

    /// The next frame if one is ready now, else `None`.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<PyFrame>> {
        Ok(self.session.try_take(py)?.map(|f| self.wrap(f)))
    }

    /// Leaves the stream. Idempotent; a `next_frame` waiting in another
    /// thread returns with `CuframesClosedError`. Frames still held stay
    /// valid until released.
    fn close(&self, py: Python<'_>) {
        self.session.close(py);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.session.closed()
    }

    /// `with subscribe(...) as sub:` closes the subscriber at the end.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the subscriber.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// `for frame in sub:` (see `__next__`).
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Iteration waits as long as it takes (no timeout, so nothing counts
    /// in `timeouts`); it ends when the stream closes (or the subscriber is
    /// closed) and raises other errors.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyFrame>> {
        Ok(self.session.iterate(py)?.map(|f| self.wrap(f)))
    }

    /// `async for frame in subscriber`: waits in a worker thread, never on
    /// the event loop.
    fn __aiter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("cuframes._aio")?
            .getattr("FrameStream")?
            .call1((slf,))
    }

    /// Calls `callback(frame)` for every frame on a background thread and
    /// returns a `FrameCallback` handle (`stop()`, `join()`, `with`). Each
    /// frame is released when the callback returns. `timeout_ms`: a wait
    /// longer than this is reported as `CuframesTimeoutError` (default:
    /// wait forever). Errors — raised by the callback or by the stream —
    /// go to `on_error(exc)` if given (return to go on, raise to stop),
    /// else they stop the delivery and are re-raised by `stop()`/`join()`.
    /// The delivery ends normally when the stream closes.
    #[pyo3(signature = (callback, *, timeout_ms=None, on_error=None, name=None))]
    fn on_frame<'py>(
        slf: Bound<'py, Self>,
        callback: Bound<'py, PyAny>,
        timeout_ms: Option<Bound<'py, PyAny>>,
        on_error: Option<Bound<'py, PyAny>>,
        name: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let none = || py.None().into_bound(py);
        Self::callback_handle(
            slf,
            "FrameCallback",
            callback,
            &[
                ("timeout_ms", timeout_ms.unwrap_or_else(none)),
                ("on_error", on_error.unwrap_or_else(none)),
                ("name", name.unwrap_or_else(none)),
            ],
        )
    }

    /// The asyncio form of `on_frame`: awaits `callback(frame)` (a
    /// coroutine function) for every frame in a task of the running event
    /// loop; the waits happen in worker threads. Returns an
    /// `AsyncFrameCallback` (`await stop()`, `await join()`, `async with`).
    #[pyo3(signature = (callback, *, timeout_ms=None, on_error=None))]
    fn on_frame_async<'py>(
        slf: Bound<'py, Self>,
        callback: Bound<'py, PyAny>,
        timeout_ms: Option<Bound<'py, PyAny>>,
        on_error: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let none = || py.None().into_bound(py);
        Self::callback_handle(
            slf,
            "AsyncFrameCallback",
            callback,
            &[
                ("timeout_ms", timeout_ms.unwrap_or_else(none)),
                ("on_error", on_error.unwrap_or_else(none)),
            ],
        )
    }

    /// The stream key.
    #[getter]
    fn key(&self) -> &str {
        self.session.key()
    }
    /// The name this subscriber shows in `cuframes ls`.
    #[getter]
    fn consumer_name(&self) -> &str {
        self.session.name()
    }
    /// How it reads.
    #[getter]
    fn mode(&self) -> PySubscriberMode {
        self.session.mode()
    }
    /// Most frames (with their views) held at once.
    #[getter]
    fn max_held(&self) -> u32 {
        self.session.max_held()
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
    /// The stream's pixel format.
    #[getter]
    fn format(&self) -> PyPixelFormat {
        self.layout
            .pixel_format()
            .expect("a connected stream has a valid format")
            .into()
    }
    /// Frame width in pixels.
    #[getter]
    fn width(&self) -> u32 {
        self.layout.width
    }
    /// Frame height in pixels.
    #[getter]
    fn height(&self) -> u32 {
        self.layout.height
    }

    /// Frames handed out.
    #[getter]
    fn frames_received(&self) -> u64 {
        self.session.snapshot().frames_received
    }
    /// Waits that ran out of the time the caller gave (`next_frame`,
    /// `next_frame_async`, a callback's `timeout_ms`); the internal waits
    /// of iteration and callbacks do not count.
    #[getter]
    fn timeouts(&self) -> u64 {
        self.session.snapshot().timeouts
    }
    /// Calls that failed otherwise.
    #[getter]
    fn errors(&self) -> u64 {
        self.session.snapshot().errors
    }
    /// Seq of the last frame (0: none yet).
    #[getter]
    fn last_seq(&self) -> u64 {
        self.session.snapshot().last_seq
    }
    /// Times the seq jumped by more than one.
    #[getter]
    fn gap_count(&self) -> u64 {
        self.session.snapshot().gap_count
    }
    /// PTS of the last frame.
    #[getter]
    fn last_frame_pts_ns(&self) -> i64 {
        self.session.snapshot().last_frame_pts_ns
    }
    /// Frames lost (QUEUE under DROP_OLDEST, or evicted for lagging) or
    /// skipped (NEWEST_ONLY), as counted in shared memory by the publisher.
    #[getter]
    fn dropped(&self) -> u64 {
        self.session.snapshot().dropped
    }
    /// Slots of the ring held or still needed, read from shared memory.
    #[getter]
    fn ring_occupancy(&self) -> u32 {
        self.session.snapshot().ring_occupancy
    }

    /// All counters as a dict (for health reports).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.session.stats(py)
    }

    /// `CuframesSubscriber(key=…, consumer_name=…, mode=…, max_held=…)`.
    fn __repr__(&self) -> String {
        format!(
            "CuframesSubscriber(key={:?}, consumer_name={:?}, mode=SubscriberMode.{}, max_held={}{})",
            self.session.key(),
            self.session.name(),
            self.session.mode().name(),
            self.session.max_held(),
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
