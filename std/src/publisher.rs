//! The publisher: creates a stream, loans slots, commits frames.

use crate::key::{shm_dir, validate_key};
use crate::liveness::{key_of, name_of, sweep_dead_subscribers};
use crate::mapping::Shared;
use crate::sys;
use crate::{Error, ErrorCode, Result};
use cuframes_core::{
    Backend, Content, FrameLayout, Identity, LoanError, LosslessPolicy, RingParams, RingRef,
    SegmentHeader, ValidateError, WriteGrant, Writer,
};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Publisher settings.
///
/// ```
/// use cuframes::{LosslessPolicy, PublisherOptions};
/// let opts = PublisherOptions { slot_count: 6, policy: LosslessPolicy::DropOldest, ..Default::default() };
/// assert_eq!(opts.subscriber_capacity, 16);
/// ```
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Slots in the ring (2..=64). Must cover the frames all subscribers may
    /// hold at once plus two.
    pub slot_count: u32,
    /// Subscriber records (1..=63).
    pub subscriber_capacity: u32,
    /// What to do when a lossless subscriber lags.
    pub policy: LosslessPolicy,
    /// How long [`Publisher::loan`] waits for a slot before `Timeout`.
    pub block_timeout: Duration,
    /// File mode of the segment: 0o600 by default; 0o660 shares it with the
    /// group. World access is refused.
    pub mode: u32,
    /// Row alignment of each plane (power of two).
    pub pitch_align: u32,
    /// Heartbeat and dead-subscriber sweep period.
    pub heartbeat: Duration,
    /// Under [`LosslessPolicy::Block`], what a loan does when a lossless
    /// subscriber has held it back for the whole block timeout: `true`
    /// (the default) evicts that subscriber from lossless duty (it skips to
    /// the newest frame and its next read reports `Lagged`; the frames it
    /// holds stay intact) and the loan goes on, so one stalled reader cannot
    /// stop the stream; `false` fails the loan with `Timeout` instead.
    pub evict_lagging: bool,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            slot_count: 8,
            subscriber_capacity: 16,
            policy: LosslessPolicy::Block,
            block_timeout: Duration::from_secs(1),
            mode: 0o600,
            pitch_align: 64,
            heartbeat: Duration::from_millis(100),
            evict_lagging: true,
        }
    }
}

/// Writes frames into a stream in host shared memory. One per key: a second
/// publisher on a live key gets `AlreadyExists`. Dropping it closes the
/// stream and removes its segment.
///
/// ```
/// use cuframes::{FrameLayout, PixelFormat, Publisher, PublisherOptions};
/// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
/// let layout = FrameLayout::new(PixelFormat::Gray8, 64, 48, 64).unwrap();
/// let mut publisher = Publisher::create("doc-publisher", layout, PublisherOptions::default()).unwrap();
/// let mut lease = publisher.loan().unwrap();
/// lease.plane_mut(0).fill(128);
/// let seq = lease.commit(0).unwrap();
/// assert_eq!(seq, 1);
/// let seq = publisher.publish_from(&vec![7u8; 64 * 48], 40_000_000).unwrap();
/// assert_eq!(seq, 2);
/// ```
pub struct Publisher {
    pub(crate) writer: Writer<Arc<Shared>>,
    key: String,
    layout: FrameLayout,
    block_timeout: Duration,
    evict_lagging: bool,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
    /// [`sys::fork_generation`] at creation: a copy in a forked child
    /// neither closes nor removes the parent's stream.
    forks: u64,
    keeper: Option<JoinHandle<()>>,
    /// `.cuframes.<key>.lock`, flocked for the publisher's life.
    lock: (File, std::path::PathBuf),
    /// Set by the [`Retention`] of the retained slot once it is dropped.
    retention: Option<Arc<AtomicBool>>,
    /// Ended by [`abandon`](Publisher::abandon): no close on drop.
    abandoned: bool,
}

impl Publisher {
    /// Creates the stream `key` with the given frame layout.
    pub fn create(key: &str, layout: FrameLayout, options: PublisherOptions) -> Result<Self> {
        Self::create_with_backend(key, layout, options, Backend::HOST, |_| Ok(()))
    }

    /// Creates a stream whose slot data lives elsewhere (GPU memory): the
    /// segment carries `backend.memory` and a backend area of
    /// `backend.len` bytes that `init` fills (device handles, say) before
    /// the stream becomes visible. Used by the CUDA layer; host streams use
    /// [`create`](Self::create).
    pub fn create_with_backend(
        key: &str,
        layout: FrameLayout,
        options: PublisherOptions,
        backend: Backend,
        init: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<Self> {
        layout
            .validate()
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))?;
        Self::create_planned(
            key,
            options,
            |ring, who| SegmentHeader::plan(&layout, ring, &backend, who),
            |shared| shared.with_private_backend(init),
        )
    }

    /// Creates a stream from a planned header: `plan` lays the segment out,
    /// `init` fills its private parts before it becomes visible. Frame and
    /// packet streams differ only in these two.
    pub(crate) fn create_planned(
        key: &str,
        options: PublisherOptions,
        plan: impl FnOnce(&RingParams, &Identity) -> Result<SegmentHeader, ValidateError>,
        init: impl FnOnce(&mut Shared) -> Result<()>,
    ) -> Result<Self> {
        validate_key(key)?;
        if options.mode & 0o007 != 0 || options.mode & 0o600 != 0o600 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "mode {:o}: owner must read and write; others get nothing",
                    options.mode
                ),
            ));
        }
        let ring = RingParams {
            slot_count: options.slot_count,
            subscriber_capacity: options.subscriber_capacity,
            policy: options.policy,
            block_timeout_ns: options.block_timeout.as_nanos().min(u64::MAX as u128) as u64,
        };
        let who = Identity {
            epoch: sys::random_u64(),
            pid: sys::pid(),
            start_time: sys::own_start_time(),
            created_unix_ns: sys::unix_ns(),
            pid_ns: sys::own_pid_ns(),
        };
        let header =
            plan(&ring, &who).map_err(|e| Error::new(ErrorCode::InvalidArgument, e.to_string()))?;
        // Planned before the key is locked: a stream refused here leaves
        // no lock file behind.
        let lock = lock_key(key, options.mode)?;
        let layout = header.layout;
        let mut shared = Shared::create(key, &header, options.mode)?;
        // Held for the publisher's life; subscribers in any pid namespace
        // see it dropped by the kernel the moment this process dies.
        shared.lock_publisher()?;
        // Everything is in place before the rename makes it visible: no
        // subscriber ever sees a half-made stream.
        init(&mut shared)?;
        shared
            .ring()
            .control()
            .heartbeat_ns
            .store(sys::now_ns(), Ordering::Relaxed);
        shared.ring().open();
        shared.install(key)?;
        let writer = Writer::new(Arc::new(shared));
        let info = &writer.handle().info;
        tracing::info!(
            key,
            epoch = format_args!("{:016x}", who.epoch),
            pid = who.pid,
            format = info.format_name(),
            width = layout.width,
            height = layout.height,
            slots = options.slot_count,
            subscriber_capacity = options.subscriber_capacity,
            policy = ?options.policy,
            memory = info.memory.name(),
            "publisher created stream"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicBool::new(false));
        let keeper = spawn_keeper(
            writer.handle().clone(),
            stop.clone(),
            broken.clone(),
            options.heartbeat,
        );
        Ok(Self {
            writer,
            key: key.to_owned(),
            layout,
            block_timeout: options.block_timeout,
            evict_lagging: options.evict_lagging,
            stop,
            broken,
            forks: sys::fork_generation(),
            keeper: Some(keeper),
            lock,
            retention: None,
            abandoned: false,
        })
    }

    /// The stream key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The validated segment header.
    pub fn segment_info(&self) -> &cuframes_core::SegmentInfo {
        &self.writer.handle().info
    }

    /// Start and length of the backend area (slot data for host memory,
    /// device handles for GPU memory).
    pub fn backend_area(&self) -> (*mut u8, usize) {
        self.writer.handle().backend_area()
    }

    fn require_host(&self) -> Result<()> {
        let info = self.segment_info();
        if info.content != Content::Frames {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "this stream carries packets: write them through the packet publisher",
            ));
        }
        match info.memory {
            cuframes_core::MemoryKind::Host => Ok(()),
            m => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "this stream keeps frames in {} memory: write them through the CUDA publisher",
                    m.name()
                ),
            )),
        }
    }

    /// The frame layout.
    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// This instance's epoch (random; changes when a publisher restarts).
    pub fn epoch(&self) -> u64 {
        self.writer.handle().info.header.epoch
    }

    /// Loans a slot, waiting up to the block timeout while every slot is
    /// held or (policy `Block`) still needed by a lossless subscriber.
    pub fn loan(&mut self) -> Result<WriteLease<'_>> {
        self.require_host()?;
        let slot = self.loan_slot(&|| false)?;
        let shared = self.writer.handle().clone();
        let grant = self.writer.grant_pending().expect("the slot just loaned");
        debug_assert_eq!(grant.slot(), slot);
        Ok(WriteLease::new(grant, shared))
    }

    /// Waits for a slot and takes it, as a pending loan of the writer. A
    /// slot seen free can be lost to a reader's momentary probe before the
    /// writer takes it: then it waits again, within the same deadline.
    pub(crate) fn loan_slot(&mut self, stop: &dyn Fn() -> bool) -> Result<u32> {
        let deadline = Instant::now() + self.block_timeout;
        loop {
            self.wait_for_slot(deadline, stop)?;
            match self.writer.begin() {
                Ok(slot) => return Ok(slot),
                Err(e) => loan_error(e)?,
            }
        }
    }

    /// Loans a slot like [`loan`](Self::loan) but without borrowing the
    /// publisher, for language bindings: finish it with
    /// [`commit_detached`](Self::commit_detached) or
    /// [`abort_detached`](Self::abort_detached). The returned pointer is
    /// valid for writing until then; a second detached loan before that
    /// fails with `InvalidArgument`.
    ///
    /// ```
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// use cuframes::*;
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// let mut p = Publisher::create("doc-detached", layout, Default::default()).unwrap();
    /// let lease = p.loan_detached().unwrap();
    /// assert!(p.loan_detached().is_err());
    /// // SAFETY: the pointer covers `lease.len` bytes until commit.
    /// unsafe { lease.data.write_bytes(1, lease.len) };
    /// assert_eq!(p.commit_detached(0).unwrap(), 1);
    /// assert!(p.commit_detached(0).is_err());
    /// ```
    pub fn loan_detached(&mut self) -> Result<DetachedLease> {
        self.loan_detached_unless(|| false)
    }

    /// [`loan_detached`](Self::loan_detached) that gives up with
    /// `WouldBlock` when `stop()` turns true while it waits for a slot
    /// (polled at least every 50 ms): lets a media framework's flush or
    /// state change interrupt a loan blocked by a slow subscriber.
    ///
    /// ```
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// use cuframes::*;
    /// use std::time::Duration;
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// let options = PublisherOptions { slot_count: 3, block_timeout: Duration::from_secs(60), ..Default::default() };
    /// let mut p = Publisher::create("doc-detached-unless", layout, options).unwrap();
    /// let mut s = Subscriber::connect("doc-detached-unless", "s", Mode::NewestOnly, Default::default()).unwrap();
    /// p.publish_from(&[0; 256], 0).unwrap();
    /// let held = s.next_frame(Duration::from_secs(1)).unwrap();
    /// p.publish_from(&[1; 256], 0).unwrap();
    /// let kept = p.retain_newest().unwrap();
    /// p.publish_from(&[2; 256], 0).unwrap();
    /// // Held, retained, head: no slot is free, and this loan would wait a minute.
    /// let e = p.loan_detached_unless(|| true).unwrap_err();
    /// assert_eq!(e.code(), ErrorCode::WouldBlock);
    /// drop(held);
    /// assert!(p.loan_detached_unless(|| true).is_ok(), "a free slot is taken without waiting");
    /// ```
    pub fn loan_detached_unless(&mut self, stop: impl Fn() -> bool) -> Result<DetachedLease> {
        if self.writer.pending().is_some() {
            loan_error(LoanError::Pending)?;
        }
        let slot = self.loan_slot(&stop)?;
        let shared = self.writer.handle();
        Ok(DetachedLease {
            seq: self.writer.next_seq(),
            slot,
            data: shared.slot_ptr(slot).unwrap_or(std::ptr::null_mut()),
            len: self.layout.slot_bytes as usize,
        })
    }

    /// Publishes the detached loan; returns its seq.
    pub fn commit_detached(&mut self, pts_ns: i64) -> Result<u64> {
        self.writer
            .commit_pending(pts_ns, sys::now_ns())
            .map(|c| c.seq)
            .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, "no slot is loaned"))
    }

    /// Gives the detached loan back unpublished; false if there was none.
    pub fn abort_detached(&mut self) -> bool {
        self.writer.abort_pending()
    }

    /// Keeps the newest frame's slot from being reused by this publisher
    /// until the returned [`Retention`] is dropped (from any thread): for
    /// bytes published in place that something in this process still
    /// reads, such as a GStreamer buffer that outlives its render. The
    /// frame stays readable by subscribers as usual. One retention at a
    /// time (`Capacity` while one is alive); it costs the ring one slot
    /// while it lasts. `InvalidArgument` before the first commit.
    ///
    /// ```
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// use cuframes::*;
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// let options = PublisherOptions { slot_count: 3, ..Default::default() };
    /// let mut p = Publisher::create("doc-retain", layout, options).unwrap();
    /// p.publish_from(&[7; 256], 0).unwrap();
    /// let kept = p.retain_newest().unwrap();
    /// for i in 0..10 {
    ///     p.publish_from(&[i; 256], 0).unwrap(); // written around the kept slot
    /// }
    /// assert_eq!(p.retain_newest().unwrap_err().code(), ErrorCode::Capacity);
    /// drop(kept); // any thread; the slot is the ring's again
    /// p.publish_from(&[0; 256], 0).unwrap();
    /// ```
    pub fn retain_newest(&mut self) -> Result<Retention> {
        self.apply_released();
        if self.retention.is_some() {
            return Err(Error::new(
                ErrorCode::Capacity,
                "a slot is retained already (drop its Retention first)",
            ));
        }
        if self.writer.retain_head().is_none() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "nothing published yet",
            ));
        }
        let released = Arc::new(AtomicBool::new(false));
        self.retention = Some(released.clone());
        Ok(Retention {
            released,
            shared: self.writer.handle().clone(),
        })
    }

    /// Lets go of the retained slot once its [`Retention`] was dropped.
    fn apply_released(&mut self) {
        if self
            .retention
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire))
        {
            self.retention = None;
            self.writer.release_retained();
        }
    }

    /// Waits until a loan would succeed, sweeping dead subscribers while it
    /// waits. At the deadline, lossless subscribers that still hold the
    /// writer back are evicted (if so configured); otherwise, or if
    /// subscribers hold every slot, `Timeout`.
    fn wait_for_slot(&mut self, deadline: Instant, stop: &dyn Fn() -> bool) -> Result<()> {
        self.check_intact()?;
        let shared = self.writer.handle().clone();
        let ring = shared.ring();
        loop {
            self.apply_released();
            match self.writer.poll_loan() {
                Ok(()) => return Ok(()),
                Err(e) => loan_error(e)?,
            }
            sweep_dead_subscribers(&shared);
            let now = Instant::now();
            if now >= deadline
                && self.evict_lagging
                && self.writer.poll_loan() == Err(LoanError::Backpressure)
            {
                let evicted = self.writer.evict_laggards();
                if evicted != 0 {
                    log_evictions(&shared, evicted, self.block_timeout);
                    continue;
                }
            }
            if stop() {
                return Err(Error::new(
                    ErrorCode::WouldBlock,
                    "the wait for a slot was interrupted",
                ));
            }
            if now >= deadline {
                self.check_intact()?;
                let why = match self.writer.poll_loan() {
                    Err(LoanError::Backpressure) => {
                        "a lossless subscriber is not keeping up (backpressure)"
                    }
                    _ => "no free slot: subscribers hold them all",
                };
                tracing::debug!(key = self.key.as_str(), why, "loan timed out");
                return Err(Error::new(ErrorCode::Timeout, why));
            }
            let seen = ring.begin_wait_space();
            // After the announce: a Retention dropped from here on bumps
            // `space`, so the futex wait below returns.
            self.apply_released();
            if self.writer.poll_loan().is_err() {
                let nap = (deadline - now).min(Duration::from_millis(50));
                sys::futex_wait(&ring.control().space, seen, nap);
            }
            ring.end_wait_space();
        }
    }

    /// `Corrupt` once the segment file was truncated or resized under us
    /// (noticed by the keeper thread, or by a fault the guard caught).
    fn check_intact(&self) -> Result<()> {
        if !self.broken.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.writer.handle().check_intact()?;
        Err(Error::new(
            ErrorCode::Corrupt,
            "the segment file was resized under the publisher",
        ))
    }

    /// Loans a slot without waiting; `Ok(None)` when none is free now.
    pub fn try_loan(&mut self) -> Result<Option<WriteLease<'_>>> {
        self.require_host()?;
        self.check_intact()?;
        self.apply_released();
        let shared = self.writer.handle().clone();
        match self.writer.try_loan() {
            Ok(grant) => Ok(Some(WriteLease::new(grant, shared))),
            Err(e) => loan_error(e).map(|()| None),
        }
    }

    /// Copies a tightly packed frame (each plane's rows back to back, no
    /// pitch padding, planes in order) into a slot and commits it.
    pub fn publish_from(&mut self, packed: &[u8], pts_ns: i64) -> Result<u64> {
        self.require_host()?;
        let need = self.layout.packed_bytes();
        if packed.len() as u64 != need {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("frame has {} bytes; the layout needs {need}", packed.len()),
            ));
        }
        let mut lease = self.loan()?;
        lease.copy_from_packed(packed);
        lease.commit(pts_ns)
    }

    /// A handle that keeps this stream's memory mapped, not the stream
    /// itself: after the publisher is dropped (stream closed, segment
    /// removed) the loaned slot's bytes stay addressable until the guard
    /// goes. For bindings whose views of a loan may outlive the publisher.
    pub fn mapping_guard(&self) -> MappingGuard {
        MappingGuard(self.writer.handle().clone())
    }

    /// Whether subscriber record `index` has a live owner (its liveness
    /// lock is held). For the CUDA layer, which must not wait on the events
    /// of a dead subscriber.
    pub fn subscriber_alive(&self, index: u32) -> bool {
        self.writer.handle().record_locked_by_other(index)
    }

    /// Frees the records of subscribers that died; returns how many. The
    /// keeper thread does this every heartbeat, and loans do it while they
    /// wait.
    pub fn sweep(&self) -> usize {
        sweep_dead_subscribers(self.writer.handle())
    }

    /// Ring-wide statistics.
    pub fn stats(&self) -> cuframes_core::RingStats {
        self.writer.handle().ring().stats()
    }

    /// Closes the stream: subscribers drain what is left, then get `Closed`.
    /// Dropping the publisher does this too.
    pub fn close(self) {}

    /// Ends the stream as if this publisher had died: the key is free
    /// again and subscribers get `PublisherGone` (not `Closed`), so those
    /// that reconnect wait for the next publisher. For a relay whose
    /// source died elsewhere (a bridge whose remote publisher vanished).
    ///
    /// ```
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// use cuframes::*;
    /// use std::time::Duration;
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    /// let p = Publisher::create("doc-abandon", layout, Default::default()).unwrap();
    /// let mut s = Subscriber::connect("doc-abandon", "s", Mode::Queue, Default::default()).unwrap();
    /// p.abandon();
    /// let e = s.next_frame(Duration::from_secs(2)).unwrap_err();
    /// assert_eq!(e.code(), ErrorCode::PublisherGone);
    /// ```
    pub fn abandon(mut self) {
        self.abandoned = true;
    }

    /// Closes the stream as [`close`](Self::close) does but keeps it
    /// mapped and its records readable until the publisher is dropped: for
    /// the CUDA layer, which must see subscribers let go of device memory
    /// before freeing it. No loan succeeds afterwards.
    ///
    /// ```
    /// # use cuframes::*;
    /// # std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    /// let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64)?;
    /// let mut p = Publisher::create("doc-close-mapped", layout, Default::default())?;
    /// p.close_keep_mapped();
    /// assert_eq!(p.loan().err().map(|e| e.code()), Some(ErrorCode::Closed));
    /// assert_eq!(p.stats().active().count(), 0);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn close_keep_mapped(&mut self) {
        if sys::fork_generation() == self.forks {
            self.writer.close();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if sys::fork_generation() != self.forks {
            return; // the parent's stream, and no keeper thread here
        }
        if !self.abandoned {
            self.writer.close();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.keeper.take() {
            k.thread().unpark();
            let _ = k.join();
        }
        self.writer.handle().unlink_if_current();
        // The lock file goes too, while we still hold it: a publisher that
        // opened it meanwhile finds it gone from the path once it gets the
        // lock, and locks the new one (see `lock_key`).
        let (file, path) = &self.lock;
        use std::os::unix::fs::MetadataExt;
        if file.metadata().ok().map(|m| (m.dev(), m.ino())) == crate::mapping::file_id(path) {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(
            key = self.key.as_str(),
            epoch = format_args!("{:016x}", self.epoch()),
            published = self
                .writer
                .handle()
                .ring()
                .control()
                .published
                .load(Ordering::Relaxed),
            "publisher closed stream"
        );
    }
}

/// Warns about lossless subscribers just evicted (`evicted`: bit *i* for
/// record *i*): how many, and which.
fn log_evictions(shared: &Shared, evicted: u64, waited: Duration) {
    let ring = shared.ring();
    let who: Vec<String> = ring
        .subscribers()
        .iter()
        .enumerate()
        .filter(|(i, _)| evicted & (1 << i) != 0)
        .map(|(i, r)| {
            format!(
                "{i}:{}(pid {})",
                name_of(&ring.record_name(i as u32)),
                r.pid.load(Ordering::Relaxed)
            )
        })
        .collect();
    tracing::warn!(
        key = key_of(shared),
        evicted = evicted.count_ones(),
        subscribers = who.join(",").as_str(),
        waited_ms = waited.as_millis() as u64,
        "evicted lagging lossless subscribers: they skip to the newest frame"
    );
}

/// `Ok` for the waitable loan errors, the typed error for the others.
fn loan_error(e: LoanError) -> Result<()> {
    match e {
        LoanError::Full | LoanError::Backpressure => Ok(()),
        LoanError::Closed => Err(Error::new(ErrorCode::Closed, "stream closed")),
        LoanError::Pending => Err(Error::new(
            ErrorCode::InvalidArgument,
            "a slot is already loaned",
        )),
        LoanError::SeqExhausted => Err(Error::new(
            ErrorCode::Capacity,
            "sequence numbers exhausted",
        )),
    }
}

/// Holds `.cuframes.<key>.lock` with an exclusive `flock` for the
/// publisher's life: the kernel drops it when the process dies, however it
/// dies, so a crashed publisher never blocks its successor. `cuframes gc`
/// may unlink the lock file of a dead key (under its lock); a lock taken on
/// a file that was unlinked meanwhile guards nothing, so after locking the
/// path must still name the locked file, else we open it again.
fn lock_key(key: &str, mode: u32) -> Result<(File, std::path::PathBuf)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = shm_dir().join(format!(".cuframes.{key}.lock"));
    let taken = || {
        Error::new(
            ErrorCode::AlreadyExists,
            format!("stream {key:?} already has a live publisher"),
        )
    };
    for _ in 0..64 {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(
                rustix::fs::OFlags::NOFOLLOW.bits() as i32
                    | rustix::fs::OFlags::CLOEXEC.bits() as i32,
            )
            .open(&path)
            .map_err(|e| Error::io(format!("lock {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("fstat lock file", e))?;
        // The umask must not narrow the mode: with 0o660 a group member must
        // be able to open the lock file to publish the key after us. Only
        // the owner can change it; a file someone else made keeps its mode.
        if meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o777 != mode {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
        }
        let locked =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        let current = crate::mapping::file_id(&path) == Some((meta.dev(), meta.ino()));
        match (locked, current) {
            (true, true) => return Ok((file, path)),
            (false, true) => return Err(taken()),
            // Unlinked (or replaced) under us: try the file now at the path.
            (_, false) => continue,
        }
    }
    Err(taken())
}

/// The publisher's background thread: heartbeat, publish-rate average, and
/// the dead-subscriber sweep, so slots held by a killed subscriber come back
/// even when nobody is waiting for them.
fn spawn_keeper(
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
    period: Duration,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("cuframes-keeper".into())
        .spawn(move || {
            let ctl = shared.ring().control();
            let (mut last_n, mut last_t) = (ctl.published.load(Ordering::Relaxed), sys::now_ns());
            let mut last_bytes = ctl.bytes.load(Ordering::Relaxed);
            let (mut rate, mut bitrate) = (0f64, 0f64);
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(period);
                let now = sys::now_ns();
                ctl.heartbeat_ns.store(now, Ordering::Relaxed);
                let n = ctl.published.load(Ordering::Relaxed);
                let dt = now.saturating_sub(last_t).max(1) as f64 / 1e9;
                if dt >= 0.5 {
                    // Shared memory may be scribbled on: never trust it to be monotonic.
                    let bytes = ctl.bytes.load(Ordering::Relaxed);
                    rate = smooth(rate, n.wrapping_sub(last_n) as f64 / dt);
                    bitrate = smooth(bitrate, bytes.wrapping_sub(last_bytes) as f64 * 8.0 / dt);
                    ctl.rate_mfps
                        .store((rate * 1000.0) as u64, Ordering::Relaxed);
                    ctl.bitrate_bps.store(bitrate as u64, Ordering::Relaxed);
                    (last_n, last_t, last_bytes) = (n, now, bytes);
                }
                sweep_dead_subscribers(&shared);
                if let Err(e) = shared.check_intact() {
                    // Once per handle: the flag never goes back.
                    if !broken.swap(true, Ordering::Relaxed) {
                        tracing::warn!(key = key_of(&shared), error = %e, "segment file truncated or resized under the publisher; every further loan fails with Corrupt");
                    }
                }
            }
        })
        .expect("spawn keeper thread")
}

/// One step of the heartbeat's moving average.
fn smooth(average: f64, sample: f64) -> f64 {
    if average == 0.0 {
        sample
    } else {
        0.5 * average + 0.5 * sample
    }
}

/// A publisher's hold on its newest slot, from
/// [`Publisher::retain_newest`]; dropping it (on any thread) gives the
/// slot back to the ring and wakes a loan waiting for one.
pub struct Retention {
    released: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Drop for Retention {
    fn drop(&mut self) {
        // SeqCst store, then bump_space's fence: the writer either sees the
        // flag after announcing its wait, or gets the bump (see wait_for_slot).
        self.released.store(true, Ordering::SeqCst);
        if self.shared.ring().bump_space() {
            self.shared.wake(cuframes_core::Wake::Writer);
        }
    }
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("released", &self.released.load(Ordering::Relaxed))
            .finish()
    }
}

/// Keeps a publisher's mapping alive; see [`Publisher::mapping_guard`].
#[derive(Clone)]
pub struct MappingGuard(Arc<Shared>);

impl MappingGuard {
    /// Ring-wide statistics, readable without the publisher (also after
    /// it closed the stream).
    pub fn ring_stats(&self) -> cuframes_core::RingStats {
        self.0.ring().stats()
    }

    /// Whether subscriber record `index` has a live owner (see
    /// [`Publisher::subscriber_alive`]), from any thread.
    pub fn subscriber_alive(&self, index: u32) -> bool {
        self.0.record_locked_by_other(index)
    }
}

impl std::fmt::Debug for MappingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappingGuard")
    }
}

/// A slot loaned by [`Publisher::loan_detached`].
#[derive(Debug, Clone, Copy)]
pub struct DetachedLease {
    /// The seq the frame will get.
    pub seq: u64,
    /// The slot index.
    pub slot: u32,
    /// The slot's first byte (null for GPU-memory streams: the CUDA layer
    /// computes device addresses from `slot`).
    pub data: *mut u8,
    /// Bytes of the slot (`layout().slot_bytes`).
    pub len: usize,
}

// SAFETY: the lease is an address and a length; who may write through it
// is governed by the publisher's pending loan, not by the thread holding
// the value.
unsafe impl Send for DetachedLease {}

/// A loaned slot, writable until committed. Dropping it aborts: nothing is
/// published and the slot returns to the pool.
pub struct WriteLease<'p> {
    grant: WriteGrant<'p, Arc<Shared>>,
    shared: Arc<Shared>,
    data: *mut u8,
}

impl<'p> WriteLease<'p> {
    fn new(grant: WriteGrant<'p, Arc<Shared>>, shared: Arc<Shared>) -> Self {
        let data = shared
            .slot_ptr(grant.slot())
            .expect("grant slot is within the validated table");
        Self {
            grant,
            shared,
            data,
        }
    }

    /// The sequence number the frame will get.
    pub fn seq(&self) -> u64 {
        self.grant.seq()
    }

    /// The frame layout (plane offsets and pitches inside [`data_mut`](Self::data_mut)).
    pub fn layout(&self) -> &FrameLayout {
        &self.shared.info.header.layout
    }

    /// The whole slot: `layout().slot_bytes` bytes.
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: the WRITER bit of this slot is ours until commit/abort, so
        // no subscriber reads these bytes; the range was validated to lie in
        // the mapping, which `shared` keeps alive; `&mut self` makes the
        // slice unique within this process.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.layout().slot_bytes as usize) }
    }

    /// Plane `i` as `pitch * rows` bytes (row `r` starts at `r * pitch`).
    /// Panics if the format has no plane `i`.
    pub fn plane_mut(&mut self, i: usize) -> &mut [u8] {
        let (start, end) = self
            .layout()
            .plane_range(i)
            .expect("plane index within the format's planes");
        &mut self.data_mut()[start as usize..end as usize]
    }

    /// Copies a tightly packed frame in, row by row, honouring pitches.
    /// `packed` must be `layout().packed_bytes()` long.
    pub fn copy_from_packed(&mut self, packed: &[u8]) {
        let layout = *self.layout();
        let data = self.data_mut();
        for (dst, src, len) in layout.packed_rows() {
            let (dst, src, len) = (dst as usize, src as usize, len as usize);
            data[dst..dst + len].copy_from_slice(&packed[src..src + len]);
        }
    }

    /// Publishes the frame and returns its sequence number.
    pub fn commit(self, pts_ns: i64) -> Result<u64> {
        Ok(self.grant.commit(pts_ns, sys::now_ns()).seq)
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("key", &self.key)
            .field("epoch", &self.epoch())
            .field("next_seq", &self.writer.next_seq())
            .finish_non_exhaustive()
    }
}
