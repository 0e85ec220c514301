//! The subscriber: connects to a stream, waits for frames, reads them in
//! place.

use crate::key::validate_key;
use crate::liveness::{self, key_of, Beat};
use crate::mapping::Shared;
use crate::sys;
use crate::{Error, ErrorCode, Result};
use cuframes_core::{
    Content, FrameLayout, MemoryKind, Mode, PixelFormat, ReadError, ReadGrant, RecordToken,
    Register, Ring, RingRef, Wake,
};
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Subscriber settings.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// How long [`Subscriber::connect`] waits for the stream to appear (or
    /// for a dead publisher to be replaced).
    pub connect_timeout: Duration,
    /// Most frames held at once (each held frame pins a slot).
    pub max_held: u32,
    /// Accept a segment owned by another user (shared by group mode).
    pub allow_other_owner: bool,
    /// How often, while waiting, to check that the publisher still lives.
    pub liveness_interval: Duration,
    /// Accept streams whose frames live in GPU memory. Only the CUDA layer
    /// sets this: such frames have no host bytes ([`Frame::data`] panics).
    pub accept_device_memory: bool,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            max_held: 1,
            allow_other_owner: false,
            liveness_interval: Duration::from_millis(100),
            accept_device_memory: false,
        }
    }
}

/// Counters kept by this subscriber (the seed API's health stats, plus the
/// real drop count and ring occupancy read from shared memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Frames handed out.
    pub frames_received: u64,
    /// `next_frame` calls that timed out.
    pub timeouts: u64,
    /// Calls that failed otherwise.
    pub errors: u64,
    /// Seq of the last frame (0: none yet).
    pub last_seq: u64,
    /// Times the seq jumped by more than one.
    pub gap_count: u64,
    /// Frames lost (queue mode, drop-oldest) or skipped (newest-only), as
    /// counted in shared memory.
    pub dropped: u64,
    /// PTS of the last frame.
    pub last_frame_pts_ns: i64,
    /// Commit-to-handout latency of the last frame, nanoseconds.
    pub last_latency_ns: u64,
    /// Slots of the ring held or still needed, now.
    pub ring_occupancy: u32,
    /// Slots in the ring.
    pub slot_count: u32,
}

/// The subscriber's side of the mapping: keeps the record registered while
/// the subscriber or any of its frames lives.
pub(crate) struct SubInner {
    shared: Shared,
    token: Option<RecordToken>,
    /// [`sys::fork_generation`] when connected: a forked child's copy
    /// leaves the parent's record, lock and frames alone.
    forks: u64,
}

impl SubInner {
    /// True in a child forked (without exec) from the process that
    /// connected: nothing here is this process's to give back.
    fn in_forked_child(&self) -> bool {
        sys::fork_generation() != self.forks
    }
}

impl SubInner {
    fn token(&self) -> &RecordToken {
        self.token.as_ref().expect("token present until drop")
    }
}

impl RingRef for SubInner {
    fn ring(&self) -> &Ring<'_> {
        self.shared.ring()
    }
    fn wake(&self, who: Wake) {
        self.shared.wake(who)
    }
}

impl Drop for SubInner {
    fn drop(&mut self) {
        if self.in_forked_child() {
            return;
        }
        if let Some(token) = self.token.take() {
            liveness::deregister(&self.shared, token);
        }
    }
}

impl Beat for SubInner {
    fn beat(&self, now_ns: u64) {
        let index = self.token().index() as usize;
        self.ring().subscribers()[index]
            .heartbeat_ns
            .store(now_ns, Ordering::Relaxed);
    }
}

/// Reads frames from a stream. One thread at a time (`&mut self`); frames
/// are `Send` and may be released on any thread, and they keep the mapping
/// alive after the subscriber is dropped.
///
/// ```
/// use cuframes::*;
/// use std::time::Duration;
/// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
/// let layout = FrameLayout::new(PixelFormat::Gray8, 32, 8, 64).unwrap();
/// let mut publisher = Publisher::create("doc-subscriber", layout, Default::default()).unwrap();
/// let mut sub = Subscriber::connect("doc-subscriber", "viewer", Mode::Queue, Default::default()).unwrap();
/// publisher.publish_from(&[9u8; 32 * 8], 1).unwrap();
/// let frame = sub.next_frame(Duration::from_secs(1)).unwrap();
/// assert_eq!((frame.seq(), frame.width(), frame.plane(0)[0]), (1, 32, 9));
/// frame.release();
/// assert_eq!(sub.try_next().unwrap().map(|f| f.seq()), None);
/// ```
pub struct Subscriber {
    inner: Arc<SubInner>,
    key: String,
    name: String,
    mode: Mode,
    options: SubscriberOptions,
    stats: SubscriberStats,
    /// When the publisher was last checked ([`sys::coarse_ns`]).
    last_liveness: u64,
    /// Whether a corrupt or truncated segment was logged already (warned
    /// once per handle; every later call fails the same way).
    corrupt_logged: bool,
}

impl Subscriber {
    /// Connects to `key` as `name`, waiting up to the connect timeout for
    /// the stream to exist and have a live publisher.
    pub fn connect(key: &str, name: &str, mode: Mode, options: SubscriberOptions) -> Result<Self> {
        Self::connect_to(key, name, mode, options, Content::Frames)
    }

    /// [`connect`](Self::connect) to a stream that carries `content`; any
    /// other is `Incompatible`.
    pub(crate) fn connect_to(
        key: &str,
        name: &str,
        mode: Mode,
        options: SubscriberOptions,
        content: Content,
    ) -> Result<Self> {
        validate_key(key)?;
        if options.max_held == 0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "max_held must be at least 1",
            ));
        }
        let deadline = Instant::now() + options.connect_timeout;
        let mut waited = false;
        let shared = loop {
            let attempt = Shared::open(key, true, options.allow_other_owner).and_then(|s| {
                publisher_status(&s)?;
                Ok(s)
            });
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline && retry_connect(e.code()) => {
                    if !waited {
                        tracing::debug!(key, name, error = %e, "waiting for the stream");
                        waited = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        if shared.info.content != content {
            return Err(Error::new(
                ErrorCode::Incompatible,
                match content {
                    Content::Frames => format!(
                        "stream {key:?} carries encoded packets; connect with the packet subscriber"
                    ),
                    Content::Packets => {
                        format!("stream {key:?} carries decoded frames, not encoded packets")
                    }
                },
            ));
        }
        if shared.info.memory != MemoryKind::Host && !options.accept_device_memory {
            return Err(Error::new(
                ErrorCode::Incompatible,
                format!(
                    "stream {key:?} keeps frames in {} memory; connect with the CUDA subscriber",
                    shared.info.memory.name()
                ),
            ));
        }
        let req = Register {
            mode,
            max_held: options.max_held,
            pid: sys::pid(),
            start_time: sys::own_start_time(),
            pid_ns: sys::own_pid_ns(),
            heartbeat_ns: sys::now_ns(),
            name: name.as_bytes(),
        };
        let token = liveness::register(&shared, &req)?;
        tracing::info!(
            key,
            name,
            mode = ?mode,
            index = token.index(),
            epoch = format_args!("{:016x}", shared.info.header.epoch),
            "subscriber connected"
        );
        let inner = Arc::new(SubInner {
            shared,
            token: Some(token),
            forks: sys::fork_generation(),
        });
        liveness::keep_beating(&(inner.clone() as Arc<dyn Beat>));
        Ok(Self {
            inner,
            key: key.to_owned(),
            name: name.to_owned(),
            mode,
            options,
            stats: SubscriberStats::default(),
            last_liveness: sys::coarse_ns(),
            corrupt_logged: false,
        })
    }

    /// The stream key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// This subscriber's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// How it reads.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The stream's frame layout.
    pub fn layout(&self) -> &FrameLayout {
        &self.inner.shared.info.header.layout
    }
    /// The publisher instance's epoch.
    pub fn epoch(&self) -> u64 {
        self.inner.shared.info.header.epoch
    }
    /// The validated segment header.
    pub fn segment_info(&self) -> &cuframes_core::SegmentInfo {
        &self.inner.shared.info
    }
    /// Start and length of the backend area (for the CUDA layer: device
    /// handles written by the publisher before the stream became visible).
    pub fn backend_area(&self) -> (*mut u8, usize) {
        self.inner.shared.backend_area()
    }
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
    /// This subscriber's record index (its lease bit).
    pub fn record_index(&self) -> u32 {
        self.inner.token().index()
    }
    /// The options it was connected with.
    pub fn options(&self) -> &SubscriberOptions {
        &self.options
    }

    /// Waits up to `timeout` for the next frame: the newest (NEWEST_ONLY) or
    /// the next in order (QUEUE). Errors: `Timeout`, `Closed` (after the
    /// queue is drained), `PublisherGone`, `Capacity` (holding `max_held`
    /// frames), `Corrupt`.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame> {
        self.next_frame_unless(timeout, || false)
    }

    /// [`next_frame`](Self::next_frame) that gives up with `Closed` when
    /// `stop()` turns true (polled between waits, at least every
    /// `liveness_interval`): lets a binding close a subscriber that another
    /// thread is waiting on.
    ///
    /// ```
    /// # use cuframes::*;
    /// # use std::time::Duration;
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// # let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// # let _p = Publisher::create("doc-unless", layout, Default::default()).unwrap();
    /// let mut sub = Subscriber::connect("doc-unless", "s", Mode::Queue, Default::default()).unwrap();
    /// let e = sub.next_frame_unless(Duration::from_secs(60), || true).unwrap_err();
    /// assert_eq!(e.code(), ErrorCode::Closed);
    /// ```
    pub fn next_frame_unless(
        &mut self,
        timeout: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<Frame> {
        let deadline = Instant::now() + timeout;
        let ring_handle = self.inner.clone();
        let ring = ring_handle.ring();
        loop {
            if let Some(frame) = self.attempt()? {
                return Ok(frame);
            }
            self.check_publisher(false)?;
            if stop() {
                return Err(Error::new(ErrorCode::Closed, "the subscriber was closed"));
            }
            let now = Instant::now();
            if now >= deadline {
                self.stats.timeouts += 1;
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("no frame within {timeout:?}"),
                ));
            }
            // Announce, re-check, then sleep: a commit after the re-check
            // changes `notify`, so the futex returns at once.
            let index = self.inner.token().index();
            let seen = ring.begin_wait(index);
            let got = self.attempt();
            if matches!(got, Ok(None)) {
                let nap = (deadline - now).min(self.options.liveness_interval);
                sys::futex_wait(&ring.control().notify, seen, nap);
            }
            ring.end_wait(index);
            if let Some(frame) = got? {
                return Ok(frame);
            }
        }
    }

    /// Takes a frame if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Frame>> {
        match self.attempt()? {
            Some(f) => Ok(Some(f)),
            None => {
                self.check_publisher(false)?;
                Ok(None)
            }
        }
    }

    /// Iterates over frames, each waited for up to `timeout`; ends when the
    /// stream is closed and drained.
    pub fn frames(&mut self, timeout: Duration) -> Frames<'_> {
        Frames { sub: self, timeout }
    }

    /// This subscriber's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.monitor().complete(self.stats)
    }

    /// A handle that reads this subscriber's shared-memory counters from
    /// any thread, while another one waits in [`next_frame`](Self::next_frame).
    pub fn monitor(&self) -> Monitor {
        Monitor(self.inner.clone())
    }

    /// Ring-wide statistics of the stream.
    pub fn ring_stats(&self) -> cuframes_core::RingStats {
        self.inner.ring().stats()
    }

    /// Whether the publisher's process is alive (it holds its liveness
    /// lock; one `fcntl`). A closed stream's publisher may still be alive.
    ///
    /// ```
    /// # use cuframes::*;
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// # let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// let p = Publisher::create("doc-pub-alive", layout, Default::default())?;
    /// let sub = Subscriber::connect("doc-pub-alive", "s", Mode::Queue, Default::default())?;
    /// assert!(sub.publisher_alive());
    /// drop(p);
    /// assert!(!sub.publisher_alive());
    /// # Ok::<(), Error>(())
    /// ```
    pub fn publisher_alive(&self) -> bool {
        self.inner.shared.publisher_alive()
    }

    fn attempt(&mut self) -> Result<Option<Frame>> {
        // The handle is cloned only into a grant: an empty poll costs none.
        match ReadGrant::acquire_cloned(&self.inner, self.inner.token()) {
            Ok(grant) => Ok(Some(self.deliver(grant))),
            Err(ReadError::WouldBlock) => Ok(None),
            Err(e) => {
                self.stats.errors += 1;
                // A ring that reads as nonsense may be one whose file was
                // truncated under us (the guard mapped zeros over it): say so.
                if let Err(c) = self.inner.shared.check_intact() {
                    self.log_corrupt(&c);
                    return Err(c);
                }
                let err = Error::from(e);
                match e {
                    ReadError::Lagged => tracing::warn!(
                        key = self.key.as_str(),
                        name = self.name.as_str(),
                        index = self.record_index(),
                        "this lossless subscriber was evicted for lagging: frames were skipped"
                    ),
                    ReadError::Evicted => tracing::warn!(
                        key = self.key.as_str(),
                        name = self.name.as_str(),
                        "this subscriber's record is gone"
                    ),
                    ReadError::Corrupt => self.log_corrupt(&err),
                    _ => {
                        tracing::debug!(key = self.key.as_str(), name = self.name.as_str(), error = %err, "read failed")
                    }
                }
                Err(err)
            }
        }
    }

    /// Warns about a corrupt or truncated segment, once per handle.
    fn log_corrupt(&mut self, e: &Error) {
        if !std::mem::replace(&mut self.corrupt_logged, true) {
            tracing::warn!(
                key = key_of(&self.inner.shared),
                name = self.name.as_str(),
                error = %e,
                "segment is corrupt or was truncated; this subscriber's calls fail with Corrupt"
            );
        }
    }

    fn deliver(&mut self, grant: ReadGrant<Arc<SubInner>>) -> Frame {
        let now = sys::now_ns();
        let s = &mut self.stats;
        if s.last_seq != 0 && grant.seq() != s.last_seq + 1 {
            s.gap_count += 1;
        }
        s.frames_received += 1;
        s.last_seq = grant.seq();
        s.last_frame_pts_ns = grant.pts_ns();
        s.last_latency_ns = now.saturating_sub(grant.commit_ns());
        Frame::new(grant)
    }

    /// Checks, at most every `liveness_interval` unless `force`, that the
    /// publisher lives and the segment was not replaced.
    fn check_publisher(&mut self, force: bool) -> Result<()> {
        // The coarse clock (a tick, a few ms) is enough for an interval of
        // 100 ms, and a busy-poll subscriber asks on every empty poll. It
        // may read up to a tick short: count that tick as gone, so that a
        // check is never put off past its interval.
        let now = sys::coarse_ns();
        let interval = self.options.liveness_interval.as_nanos() as u64;
        let elapsed = now.saturating_sub(self.last_liveness) + sys::coarse_res_ns();
        if !force && elapsed < interval {
            return Ok(());
        }
        self.last_liveness = now;
        let r = publisher_status(&self.inner.shared).and_then(|()| {
            if self.inner.shared.is_current() {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorCode::PublisherGone,
                    "the stream was replaced by a new publisher",
                ))
            }
        });
        if let Err(e) = &r {
            self.stats.errors += 1;
            if e.code() == ErrorCode::Corrupt {
                self.log_corrupt(e);
            } else {
                tracing::debug!(key = self.key.as_str(), name = self.name.as_str(), error = %e, "publisher check failed");
            }
        }
        r
    }
}

/// Reads a subscriber's counters kept in shared memory; see
/// [`Subscriber::monitor`]. Keeps the record registered while it lives.
#[derive(Clone)]
pub struct Monitor(Arc<SubInner>);

impl Monitor {
    /// `local` (the counters a subscriber keeps itself) completed with the
    /// shared ones: drops, ring occupancy, slot count.
    pub fn complete(&self, local: SubscriberStats) -> SubscriberStats {
        let ring = self.0.ring();
        let rec = &ring.subscribers()[self.0.token().index() as usize];
        let ring_stats = ring.stats();
        SubscriberStats {
            dropped: rec.dropped.load(Ordering::Relaxed),
            ring_occupancy: ring_stats.occupancy,
            slot_count: ring_stats.slot_count,
            ..local
        }
    }

    /// Whether the publisher's process is alive (see
    /// [`Subscriber::publisher_alive`]), from any thread.
    pub fn publisher_alive(&self) -> bool {
        self.0.shared.publisher_alive()
    }

    /// Ring-wide statistics of the stream.
    pub fn ring_stats(&self) -> cuframes_core::RingStats {
        self.0.ring().stats()
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("record", &self.0.token().index())
            .finish()
    }
}

/// `Ok` while the segment is intact, its publisher lives and the stream is
/// open.
fn publisher_status(shared: &Shared) -> Result<()> {
    let h = &shared.info.header;
    shared.check_intact()?;
    if shared.ring().is_closed() {
        return Err(Error::new(ErrorCode::Closed, "publisher closed the stream"));
    }
    if !shared.publisher_alive() {
        return Err(Error::new(
            ErrorCode::PublisherGone,
            format!("publisher pid {} is gone", h.publisher_pid),
        ));
    }
    Ok(())
}

/// Errors worth waiting out while connecting: the stream may appear, or a
/// dead or closing publisher may be replaced.
fn retry_connect(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound | ErrorCode::PublisherGone | ErrorCode::Closed
    )
}

/// Iterator from [`Subscriber::frames`].
pub struct Frames<'s> {
    sub: &'s mut Subscriber,
    timeout: Duration,
}

impl Iterator for Frames<'_> {
    type Item = Result<Frame>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.sub.next_frame(self.timeout) {
            Err(e) if e.code() == ErrorCode::Closed => None,
            r => Some(r),
        }
    }
}

/// A frame held in place in shared memory. Its slot is not reused until it
/// is released ([`release`](Self::release)) or dropped.
pub struct Frame {
    // Dropped by hand: a copy in a forked child must not release the
    // parent's hold.
    grant: ManuallyDrop<ReadGrant<Arc<SubInner>>>,
    data: *const u8,
}

impl Drop for Frame {
    fn drop(&mut self) {
        if !self.grant.handle().in_forked_child() {
            // SAFETY: the only place the grant is dropped, once; `self` is
            // not used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.grant) };
        }
    }
}

// SAFETY: `data` points into the mapping that `grant` keeps alive through
// its Arc; the bytes are read-only while the lease bit is held, so sharing
// or sending the frame across threads is sound.
unsafe impl Send for Frame {}
// SAFETY: as above; `&Frame` gives only shared, read-only access.
unsafe impl Sync for Frame {}

impl Frame {
    fn new(grant: ReadGrant<Arc<SubInner>>) -> Self {
        let shared = &grant.handle().shared;
        let data = shared
            .slot_ptr(grant.slot())
            .unwrap_or(std::ptr::null_mut());
        Self {
            grant: ManuallyDrop::new(grant),
            data,
        }
    }

    /// The slot holding it.
    pub fn slot(&self) -> u32 {
        self.grant.slot()
    }
    pub(crate) fn packet_meta(&self) -> &cuframes_core::PacketMeta {
        self.grant.packet()
    }
    /// Where its bytes live.
    pub fn memory(&self) -> MemoryKind {
        self.grant.handle().shared.info.memory
    }

    /// Sequence number (1, 2, ...).
    pub fn seq(&self) -> u64 {
        self.grant.seq()
    }
    /// Presentation timestamp given by the publisher.
    pub fn pts_ns(&self) -> i64 {
        self.grant.pts_ns()
    }
    /// Monotonic commit time.
    pub fn commit_ns(&self) -> u64 {
        self.grant.commit_ns()
    }
    /// The layout (format, size, planes).
    pub fn layout(&self) -> &FrameLayout {
        &self.grant.handle().shared.info.header.layout
    }
    /// Pixel format.
    pub fn format(&self) -> PixelFormat {
        // Frames come only from frame streams (`connect` refuses others),
        // and every frame stream's format validated.
        self.grant
            .handle()
            .shared
            .info
            .format
            .expect("a frame stream has a pixel format")
    }
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.layout().width
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.layout().height
    }
    /// Bytes from row to row of plane `i` (0 if there is no such plane).
    pub fn pitch(&self, i: usize) -> u32 {
        self.layout().planes().get(i).map_or(0, |p| p.pitch)
    }
    /// Number of planes.
    pub fn plane_count(&self) -> usize {
        self.layout().planes().len()
    }
    /// The whole slot (`layout().slot_bytes`).
    ///
    /// # Panics
    /// For a frame in GPU memory, which has no host bytes (only the CUDA
    /// layer receives such frames).
    pub fn data(&self) -> &[u8] {
        assert!(
            !self.data.is_null(),
            "frame lives in {} memory: no host bytes",
            self.memory().name()
        );
        // SAFETY: our lease bit keeps the writer out of this slot while the
        // frame lives; the range was validated to lie in the mapping, which
        // the grant's Arc keeps mapped.
        unsafe { std::slice::from_raw_parts(self.data, self.layout().slot_bytes as usize) }
    }
    /// Plane `i` as `pitch * rows` bytes; panics if there is no plane `i`.
    pub fn plane(&self, i: usize) -> &[u8] {
        let (start, end) = self
            .layout()
            .plane_range(i)
            .expect("plane index within the format's planes");
        &self.data()[start as usize..end as usize]
    }
    /// Copies the picture out tightly packed (no pitch padding).
    pub fn to_packed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.layout().packed_bytes() as usize);
        self.pack_into(&mut out);
        out
    }

    /// Appends the picture tightly packed to `out` (as
    /// [`to_packed`](Self::to_packed), without a buffer of its own: behind
    /// a header, say).
    ///
    /// ```
    /// # use cuframes::*;
    /// # use std::time::Duration;
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 10, 2, 64).unwrap();
    /// let mut p = Publisher::create("doc-pack-into", layout, Default::default()).unwrap();
    /// let mut s = Subscriber::connect("doc-pack-into", "s", Mode::Queue, Default::default()).unwrap();
    /// p.publish_from(&[5; 20], 0).unwrap();
    /// let mut out = b"hdr".to_vec();
    /// s.next_frame(Duration::from_secs(1)).unwrap().pack_into(&mut out);
    /// assert_eq!(out.len(), 3 + 20); // rows of 10, not pitches of 64
    /// ```
    pub fn pack_into(&self, out: &mut Vec<u8>) {
        let data = self.data();
        // `packed_rows` yields the rows in packed order.
        for (src, _, len) in self.layout().packed_rows() {
            let (src, len) = (src as usize, len as usize);
            out.extend_from_slice(&data[src..src + len]);
        }
    }
    /// Address of the slot's first byte (host memory).
    pub fn as_ptr(&self) -> *const u8 {
        self.data
    }
    /// Releases the frame (dropping it does the same).
    pub fn release(self) {}
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("seq", &self.seq())
            .field("format", &self.format())
            .field("width", &self.width())
            .field("height", &self.height())
            .field("pts_ns", &self.pts_ns())
            .finish()
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("mode", &self.mode)
            .field("record", &self.record_index())
            .finish_non_exhaustive()
    }
}
