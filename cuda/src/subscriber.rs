//! The CUDA subscriber: opens the publisher's device memory once, then
//! hands out frames as device pointers.

use crate::area::{parse_area, snapshot, AreaInfo, ExportMode, SyncTable};
use crate::driver::{self, device_count, Device, DevicePtr, RawStream};
use crate::fdpass::{self, Expect};
use crate::memory::{HostRegistration, IpcImport, Vmm};
use cuframes::{
    Error, ErrorCode, Frame, FrameLayout, Mode, Monitor, PixelFormat, Result, Subscriber,
    SubscriberOptions, SubscriberStats,
};
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CUDA subscriber settings.
///
/// ```
/// let o = cuframes_cuda::CudaSubscriberOptions::default();
/// assert_eq!(o.device, None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CudaSubscriberOptions {
    /// The host ring's settings (connect timeout, max held, ...).
    /// `accept_device_memory` is set for you.
    pub ring: SubscriberOptions,
    /// Device ordinal to use; `None` picks the device whose UUID matches
    /// the publisher's (ordinals differ between processes and containers).
    pub device: Option<u32>,
}

enum Import {
    Ipc(Arc<IpcImport>),
    Vmm(Vmm),
}

impl Import {
    fn ptr(&self) -> DevicePtr {
        match self {
            Import::Ipc(m) => m.ptr,
            Import::Vmm(m) => m.ptr,
        }
    }
}

/// What frames share with their subscriber. Frames hold it and their host
/// frame (which keeps the record) and drop it first, so a record is freed
/// only after this process let go of the memory: what the publisher waits
/// for before freeing legacy IPC memory.
struct Shared {
    // Dropped by hand (see Drop), before the device; leaked if the GPU
    // never finishes with them.
    /// Keeps the sync region mapped for the GPU.
    registration: ManuallyDrop<HostRegistration>,
    memory: ManuallyDrop<Import>,
    sync: SyncTable,
    /// Our subscriber record: the row of the release table we own.
    row: u32,
    area: AreaInfo,
    /// The publisher's liveness and head seq, from any thread.
    monitor: Monitor,
    dev: Arc<Device>,
}

/// Reads frames that live in GPU memory. Opening costs milliseconds (IPC
/// handles, events); it happens once, in [`connect`](Self::connect).
///
/// ```no_run
/// use cuframes_cuda::{CudaSubscriber, CudaSubscriberOptions};
/// use cuframes::Mode;
/// use std::time::Duration;
/// let mut sub = CudaSubscriber::connect("cam0", "detector", Mode::NewestOnly, CudaSubscriberOptions::default())?;
/// let frame = sub.next_frame(Duration::from_millis(100))?;
/// let (y, pitch) = (frame.device_ptr(0), frame.pitch(0));
/// // ... launch work reading `y` on `frame.consumer_stream()` ...
/// frame.release(); // records the release event on the consumer stream
/// # let _ = (y, pitch);
/// # Ok::<(), cuframes::Error>(())
/// ```
pub struct CudaSubscriber {
    // Field order is drop order: our hold on the memory goes before the
    // host subscriber's record.
    shared: Arc<Shared>,
    sub: Subscriber,
    stream: RawStream,
}

// SAFETY: the raw stream is a driver handle usable from any thread with
// the context current (every use enters it).
unsafe impl Send for CudaSubscriber {}

impl CudaSubscriber {
    /// Connects to a stream whose frames live in GPU memory. Errors:
    /// everything [`Subscriber::connect`] returns, `InvalidArgument` for a
    /// host-memory stream, `Corrupt`/`Incompatible` for a bad backend area,
    /// `Cuda` (no driver, publisher's GPU not visible, IPC open failed),
    /// `Permission` (refused by the descriptor socket).
    pub fn connect(
        key: &str,
        name: &str,
        mode: Mode,
        options: CudaSubscriberOptions,
    ) -> Result<Self> {
        let started = Instant::now();
        let mut ring_opts = options.ring.clone();
        ring_opts.accept_device_memory = true;
        let sub = Subscriber::connect(key, name, mode, ring_opts)?;
        let seg = *sub.segment_info();
        let export = ExportMode::from_memory_kind(seg.memory).ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("stream {key:?} keeps frames in host memory: use cuframes::Subscriber"),
            )
        })?;
        let (area_ptr, area_len) = sub.backend_area();
        // SAFETY: the host subscriber validated [ptr, ptr + len) to lie in
        // its mapping, which it keeps alive.
        let bytes = unsafe { snapshot(area_ptr, area_len) };
        let area = parse_area(&bytes)?;
        area.check_segment(&seg)?;
        // Our record was free before we claimed it: a previous owner that
        // died with reads pending never completes them. Settle at once
        // (CPU only): until then the publisher waits for them.
        let row = sub.record_index();
        // SAFETY: the validated backend area of our mapping (page-aligned),
        // laid out as `area` says; the host subscriber keeps it mapped.
        unsafe { SyncTable::new(area_ptr, 0, &area.header) }.settle_row(row);
        debug_assert_eq!(area.mode, export);
        let dev = open_device(options.device, &area.header.device_uuid)?;
        let _g = dev.enter()?;
        dev.check_stream_memory_ops()?;
        let memory = match area.mode {
            ExportMode::Ipc => Import::Ipc(IpcImport::open(&dev, area.header.mem_handle)?),
            ExportMode::VmmFd => {
                let path = fdpass::socket_path(key)?;
                let own_ns = cuframes::own_pid_ns();
                let same_ns = seg.header.publisher_pid_ns == 0
                    || own_ns == 0
                    || seg.header.publisher_pid_ns == own_ns;
                let expect = Expect {
                    epoch: seg.header.epoch,
                    alloc_bytes: area.header.alloc_bytes,
                    pid: same_ns.then_some(seg.header.publisher_pid),
                    uid: (!options.ring.allow_other_owner)
                        .then(|| rustix::process::geteuid().as_raw()),
                };
                let deadline =
                    started + options.ring.connect_timeout.max(Duration::from_millis(200));
                let fd = fdpass::fetch_fd(&path, &expect, deadline)?;
                Import::Vmm(Vmm::import(&dev, &fd, area.header.alloc_bytes)?)
            }
        };
        // SAFETY: the area is the validated backend area of our mapping
        // (page-aligned), laid out as `area` says; the host subscriber,
        // dropped after `Shared`, keeps it mapped.
        let registration = unsafe {
            let (host, len) = SyncTable::new(area_ptr, 0, &area.header).region();
            HostRegistration::new(&dev, host, len)?
        };
        // SAFETY: as above; the registration maps the sync region.
        let sync = unsafe { SyncTable::new(area_ptr, registration.device, &area.header) };
        drop(_g);
        Ok(Self {
            shared: Arc::new(Shared {
                registration: ManuallyDrop::new(registration),
                memory: ManuallyDrop::new(memory),
                sync,
                row,
                area,
                monitor: sub.monitor(),
                dev,
            }),
            sub,
            stream: std::ptr::null_mut(),
        })
    }

    /// Makes frames wait (and release) on `stream` instead of the legacy
    /// default stream: pass the stream your kernels run on (PyTorch:
    /// `torch.cuda.current_stream().cuda_stream`). Not the per-thread
    /// default stream (`CU_STREAM_PER_THREAD`, 2): frames move between
    /// threads, and it names a different stream on each, so taking a frame
    /// with it fails with `InvalidArgument`.
    ///
    /// # Safety
    /// `stream` must be a live stream of the device's primary context (or
    /// null) while frames are taken and released with it.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn set_consumer_stream(&mut self, stream: RawStream) {
        self.stream = stream;
    }

    /// The stream frames are ordered on (null: legacy default stream).
    pub fn consumer_stream(&self) -> RawStream {
        self.stream
    }

    /// Waits up to `timeout` for the next frame and makes the consumer
    /// stream wait (on the GPU) until the publisher's writes to it are done.
    /// A frame the publisher died before finishing is never handed out:
    /// `PublisherGone`.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<CudaFrame> {
        self.next_frame_unless(timeout, || false)
    }

    /// [`next_frame`](Self::next_frame) that gives up with `Closed` when
    /// `stop()` turns true; see [`Subscriber::next_frame_unless`].
    pub fn next_frame_unless(
        &mut self,
        timeout: Duration,
        stop: impl Fn() -> bool,
    ) -> Result<CudaFrame> {
        let frame = self.sub.next_frame_unless(timeout, stop);
        let frame = self.gone_check(frame)?;
        self.wrap(frame)
    }

    /// Takes a frame if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Option<CudaFrame>> {
        let frame = self.sub.try_next();
        match self.gone_check(frame)? {
            Some(f) => self.wrap(f).map(Some),
            None => Ok(None),
        }
    }

    /// Passes `r` on; a dead publisher's unfinished frames are settled
    /// first, so no stream of ours waits for them forever.
    fn gone_check<T>(&self, r: Result<T>) -> Result<T> {
        // `PublisherGone` also means a replaced stream or a lost record,
        // with the publisher alive and still writing: only a dead one's
        // frames are settled.
        if r.as_ref()
            .is_err_and(|e| e.code() == ErrorCode::PublisherGone)
            && !self.sub.publisher_alive()
        {
            self.shared.settle_publisher(self.sub.ring_stats().head_seq);
        }
        r
    }

    fn wrap(&mut self, frame: Frame) -> Result<CudaFrame> {
        if self.stream as usize == driver::PER_THREAD_STREAM {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "the per-thread default stream (2) names another stream on every thread: \
                 pass an explicit stream as the consumer stream",
            ));
        }
        let (slot, seq) = (frame.slot(), frame.seq());
        let sh = &self.shared;
        let written = sh.sync.publish(slot).load(Ordering::Acquire) >= seq;
        if !written {
            // Usually the publisher's GPU is still writing; but if its
            // process is gone the frame is never finished.
            if !self.sub.publisher_alive() {
                sh.settle_publisher(self.sub.ring_stats().head_seq);
                return Err(Error::new(
                    ErrorCode::PublisherGone,
                    format!("the publisher died before frame {seq} was complete on the GPU"),
                ));
            }
            let _g = sh.dev.enter()?;
            driver::wait_value(self.stream, sh.sync.publish_device(slot), seq)?;
        }
        Ok(CudaFrame {
            base: sh.memory.ptr() + u64::from(slot) * sh.area.header.slot_stride,
            shared: self.shared.clone(),
            frame: Some(frame),
            stream: self.stream,
            readers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The host-side subscriber (stats, layout, epoch).
    pub fn host(&self) -> &Subscriber {
        &self.sub
    }

    /// This subscriber's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.sub.stats()
    }

    /// The stream's frame layout.
    pub fn layout(&self) -> &FrameLayout {
        self.sub.layout()
    }

    /// The export mode the publisher offers and this subscriber uses.
    pub fn export_mode(&self) -> ExportMode {
        self.shared.area.mode
    }

    /// The CUDA device ordinal (in this process) the frames live on.
    pub fn device(&self) -> u32 {
        self.shared.dev.ordinal
    }
}

impl Shared {
    /// Settles a dead publisher's unfinished frames (see
    /// [`settle_publisher`](Self::settle_publisher)).
    fn settle_if_publisher_dead(&self) {
        if !self.monitor.publisher_alive() {
            self.settle_publisher(self.monitor.ring_stats().head_seq);
        }
    }

    /// Waits on the host until `stream` is idle, settling a dead
    /// publisher's frames it may be waiting for.
    fn wait_idle(&self, stream: RawStream) -> Result<()> {
        let limit = Duration::from_secs(60);
        let idle = driver::wait_idle(stream, Instant::now() + limit, || {
            self.settle_if_publisher_dead()
        })?;
        if idle {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Timeout,
                format!("the consumer stream did not finish within {limit:?}"),
            ))
        }
    }

    /// Marks every frame up to `head` (the last seq committed) complete:
    /// for a publisher that died, whose stream will never write the
    /// counters our streams may wait on. What such a frame holds is
    /// undefined; it was handed out before the death was known
    /// (docs/cuda.md). Not a larger value: the driver compares with
    /// wrap-around (`(int64_t)(*addr - value) >= 0`).
    fn settle_publisher(&self, head: u64) {
        let (slots, _) = self.sync.shape();
        let mut n = 0;
        for slot in 0..slots {
            if self.sync.publish(slot).fetch_max(head, Ordering::AcqRel) < head {
                n += 1;
            }
        }
        if n > 0 {
            tracing::warn!(
                slots = n,
                "the publisher died: GPU waits on its unfinished frames are released"
            );
        }
    }
}

impl Drop for CudaSubscriber {
    fn drop(&mut self) {
        self.shared.settle_if_publisher_dead();
        // Frames still held keep `Shared`; the last of them waits for our
        // reads (see `Drop for Shared`).
    }
}

/// How long the last holder of a subscriber's memory waits for its GPU
/// reads before it leaks the mapping instead of unmapping it under them.
const READS_GRACE: Duration = Duration::from_secs(10);

impl Drop for Shared {
    fn drop(&mut self) {
        // Every release we asked for must be complete before the memory and
        // the counters' registration go, and before our record is freed
        // (after that the publisher no longer waits for us): on whichever
        // stream each was enqueued. The counters are host memory.
        let deadline = Instant::now() + READS_GRACE;
        let (slots, _) = self.sync.shape();
        let mut last_check = Instant::now();
        while (0..slots).any(|s| self.sync.released(self.row, s).is_err()) {
            if Instant::now() >= deadline {
                tracing::error!(
                    "GPU reads of released frames did not finish within {READS_GRACE:?}; \
                     the stream's memory stays mapped until this process exits"
                );
                return; // both stay ManuallyDrop: leaked
            }
            if last_check.elapsed() >= Duration::from_millis(20) {
                self.settle_if_publisher_dead();
                last_check = Instant::now();
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: dropped once, here, and never used again (`self` goes);
        // the registration before the memory, every GPU use of both done.
        unsafe {
            ManuallyDrop::drop(&mut self.registration);
            ManuallyDrop::drop(&mut self.memory);
        }
    }
}

impl std::fmt::Debug for CudaSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSubscriber")
            .field("key", &self.sub.key())
            .field("name", &self.sub.name())
            .field("device", &self.shared.dev.ordinal)
            .field("mode", &self.shared.area.mode)
            .finish_non_exhaustive()
    }
}

fn open_device(wanted: Option<u32>, uuid: &[u8; 16]) -> Result<Arc<Device>> {
    if let Some(o) = wanted {
        let dev = Device::open(o)?;
        if &dev.uuid != uuid {
            return Err(Error::new(
                ErrorCode::Cuda,
                format!(
                    "CUDA device {o} is not the publisher's GPU (UUID {})",
                    hex(uuid)
                ),
            ));
        }
        return Ok(dev);
    }
    for o in 0..device_count()? {
        if Device::uuid_of(o).is_ok_and(|u| &u == uuid) {
            return Device::open(o);
        }
    }
    Err(Error::new(
        ErrorCode::Cuda,
        format!(
            "the publisher's GPU (UUID {}) is not visible to this process",
            hex(uuid)
        ),
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A frame held in GPU memory: device pointers per plane, valid until it
/// is released (or dropped). Release makes the consumer stream count this
/// subscriber's release of the slot after the reads enqueued before it;
/// the publisher's next write to the slot waits for that.
pub struct CudaFrame {
    base: DevicePtr,
    // Drop order: our hold on the memory, then the host frame (the lease
    // and, for the last one, the record).
    shared: Arc<Shared>,
    frame: Option<Frame>,
    stream: RawStream,
    /// Other streams made to read the frame ([`CudaFrame::use_on`]) and
    /// the thread that asked (for the per-thread default stream); the
    /// release waits for them too.
    readers: std::sync::Mutex<Vec<(usize, std::thread::ThreadId)>>,
}

// SAFETY: device addresses and stream handles are plain values usable from
// any thread with the context current (release enters it); the host frame
// is Send + Sync.
unsafe impl Send for CudaFrame {}
// SAFETY: `&CudaFrame` only reads plain values.
unsafe impl Sync for CudaFrame {}

impl CudaFrame {
    fn host(&self) -> &Frame {
        self.frame.as_ref().expect("frame present until drop")
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.host().seq()
    }
    /// Presentation timestamp.
    pub fn pts_ns(&self) -> i64 {
        self.host().pts_ns()
    }
    /// The slot holding it.
    pub fn slot(&self) -> u32 {
        self.host().slot()
    }
    /// The layout.
    pub fn layout(&self) -> &FrameLayout {
        self.host().layout()
    }
    /// Pixel format.
    pub fn format(&self) -> PixelFormat {
        self.host().format()
    }
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.host().width()
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.host().height()
    }
    /// Number of planes.
    pub fn plane_count(&self) -> usize {
        self.host().plane_count()
    }
    /// Device address of the slot's first byte (plane 0).
    pub fn base_ptr(&self) -> DevicePtr {
        self.base
    }
    /// Device address of plane `i` (0 if there is no such plane).
    pub fn device_ptr(&self, i: usize) -> DevicePtr {
        self.layout()
            .planes()
            .get(i)
            .map_or(0, |p| self.base + p.offset)
    }
    /// Bytes from row to row of plane `i` (0 if there is no such plane).
    pub fn pitch(&self, i: usize) -> u32 {
        self.host().pitch(i)
    }
    /// CUDA device ordinal (in this process).
    pub fn device(&self) -> u32 {
        self.shared.dev.ordinal
    }
    /// The consumer stream it is ordered on.
    pub fn consumer_stream(&self) -> RawStream {
        self.stream
    }

    /// Copies the picture to host memory, tightly packed, on the consumer
    /// stream, and waits for the copy.
    pub fn copy_to_host(&self) -> Result<Vec<u8>> {
        let layout = *self.layout();
        let mut out = vec![0u8; layout.packed_bytes() as usize];
        let _g = self.shared.dev.enter()?;
        let mut dst = 0usize;
        for (i, p) in layout.planes().iter().enumerate() {
            let (rb, rows) = (p.row_bytes as usize, p.rows as usize);
            let c = driver::Copy2d {
                host: out[dst..].as_mut_ptr(),
                host_pitch: rb,
                device: self.device_ptr(i),
                device_pitch: p.pitch as usize,
                width: rb,
                height: rows,
            };
            // SAFETY: host range: `rb * rows` bytes of `out` from `dst`
            // (its length is the sum over planes), alive until the
            // synchronise below; device range: plane `i` of our slot,
            // inside the validated allocation.
            unsafe { driver::copy_2d(&c, false, self.stream) }?;
            dst += rb * rows;
        }
        self.shared.wait_idle(self.stream)?;
        Ok(out)
    }

    /// Lets `stream` read the frame too: it waits (on the GPU) for the
    /// frame to be ready on the consumer stream, and the release will wait
    /// for the work it has enqueued by then. What DLPack's `stream`
    /// argument asks of a producer.
    pub fn use_on(&self, stream: RawStream) -> Result<()> {
        // Null and CU_STREAM_LEGACY (1) both name the legacy default stream.
        let legacy = |s: RawStream| s as usize <= 1;
        if stream == self.stream || (legacy(stream) && legacy(self.stream)) {
            return Ok(());
        }
        driver::order_after(&self.shared.dev, self.stream, stream)?;
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((stream as usize, std::thread::current().id()));
        Ok(())
    }

    /// Releases the frame (dropping it does the same).
    pub fn release(self) {}

    /// Orders the release on the GPU: the consumer stream waits for every
    /// reader, then counts the release of the slot.
    fn release_on_gpu(&mut self) -> Result<()> {
        let sh = &self.shared;
        let slot = self.frame.as_ref().map_or(0, Frame::slot);
        let _g = sh.dev.enter()?;
        let readers = std::mem::take(self.readers.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (r, thread) in readers {
            if r == driver::PER_THREAD_STREAM && thread != std::thread::current().id() {
                // Another thread's per-thread default stream cannot be
                // named here: wait for all of the context's work instead.
                driver::synchronize_context()?;
            } else {
                driver::order_after(&sh.dev, r as RawStream, self.stream)?;
            }
        }
        let requested = sh.sync.requested(sh.row, slot);
        let want = requested.load(Ordering::Relaxed) + 1;
        driver::write_value(self.stream, sh.sync.done_device(sh.row, slot), want)?;
        requested.store(want, Ordering::Release);
        Ok(())
    }
}

impl Drop for CudaFrame {
    fn drop(&mut self) {
        if let Err(e) = self.release_on_gpu() {
            // The release could not be ordered on the GPU: finish every
            // read here instead, so the slot is free when the lease goes.
            tracing::warn!(error = %e, "GPU release failed; synchronising instead");
            let _ = self
                .shared
                .dev
                .enter()
                .and_then(|_g| driver::synchronize_context());
        }
        // Then the fields go: our hold on the memory, then the host frame
        // (clears the lease).
    }
}

impl std::fmt::Debug for CudaFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaFrame")
            .field("seq", &self.seq())
            .field("slot", &self.slot())
            .field("base", &format_args!("{:#x}", self.base))
            .finish_non_exhaustive()
    }
}

/// The host-memory `Frame` a CUDA frame wraps (for code that only needs
/// seq, pts and layout).
impl AsRef<Frame> for CudaFrame {
    fn as_ref(&self) -> &Frame {
        self.host()
    }
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<CudaFrame>();
    is_send::<CudaSubscriber>();
}
