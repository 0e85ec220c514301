//! The CUDA subscriber: opens the publisher's device memory and events
//! once, then hands out frames as device pointers.

use crate::area::{parse_area, snapshot, AreaInfo, ExportMode, ReleaseRow};
use crate::driver::{self, device_count, Device, DevicePtr, Event, RawStream};
use crate::fdpass::{self, Expect};
use crate::memory::{IpcImport, Vmm};
use cuframes::{
    Error, ErrorCode, Frame, FrameLayout, Mode, PixelFormat, Result, Subscriber, SubscriberOptions,
    SubscriberStats,
};
use std::sync::atomic::{AtomicBool, Ordering};
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
    Ipc(IpcImport),
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

/// What frames share with their subscriber.
struct Shared {
    // Drop order: events before the memory, all before the device.
    publish_events: Vec<Event>,
    release_events: Vec<Event>,
    memory: Import,
    area: AreaInfo,
    /// False once the `CudaSubscriber` is gone: the last frames then
    /// synchronise before letting go, because deregistering stops the
    /// publisher from waiting on our release events.
    subscriber_alive: AtomicBool,
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
    sub: Subscriber,
    shared: Arc<Shared>,
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
        debug_assert_eq!(area.mode, export);
        let dev = open_device(options.device, &area.header.device_uuid)?;
        let _g = dev.enter()?;
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
        let slots = area.header.slot_count;
        let mut publish_events = Vec::with_capacity(slots as usize);
        for slot in 0..slots {
            publish_events.push(Event::open_ipc(&dev, area.publish_handle(&bytes, slot))?);
        }
        let mut release_events = Vec::with_capacity(slots as usize);
        let mut handles = Vec::with_capacity(slots as usize);
        for _ in 0..slots {
            let (ev, h) = Event::interprocess(&dev)?;
            release_events.push(ev);
            handles.push(h);
        }
        let index = sub.record_index();
        let generation = sub
            .ring_stats()
            .active()
            .find(|s| s.index == index)
            .map(|s| s.generation)
            .ok_or_else(|| Error::new(ErrorCode::PublisherGone, "our record was reclaimed"))?;
        let owner = generation;
        let tag = random_tag();
        // SAFETY: the area is the validated backend area of our mapping
        // (page-aligned), laid out as `area` says, and `index` is our
        // record, below the capacity the ring validated.
        let row = unsafe { ReleaseRow::at(area_ptr, &area.header, index) };
        row.publish(owner, &handles, tag);
        drop(_g);
        Ok(Self {
            sub,
            shared: Arc::new(Shared {
                publish_events,
                release_events,
                memory,
                area,
                subscriber_alive: AtomicBool::new(true),
                dev,
            }),
            stream: std::ptr::null_mut(),
        })
    }

    /// Makes frames wait (and release) on `stream` instead of the legacy
    /// default stream: pass the stream your kernels run on (PyTorch:
    /// `torch.cuda.current_stream().cuda_stream`).
    ///
    /// # Safety
    /// `stream` must be a live stream of the device's primary context (or
    /// null) while frames are taken and released with it.
    pub unsafe fn set_consumer_stream(&mut self, stream: RawStream) {
        self.stream = stream;
    }

    /// The stream frames are ordered on (null: legacy default stream).
    pub fn consumer_stream(&self) -> RawStream {
        self.stream
    }

    /// Waits up to `timeout` for the next frame and makes the consumer
    /// stream wait (on the GPU) until the publisher's writes to it are done.
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
        let frame = self.sub.next_frame_unless(timeout, stop)?;
        self.wrap(frame)
    }

    /// Takes a frame if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Option<CudaFrame>> {
        match self.sub.try_next()? {
            Some(f) => self.wrap(f).map(Some),
            None => Ok(None),
        }
    }

    fn wrap(&mut self, frame: Frame) -> Result<CudaFrame> {
        let slot = frame.slot();
        let sh = &self.shared;
        let ev = sh
            .publish_events
            .get(slot as usize)
            .ok_or_else(|| Error::new(ErrorCode::Corrupt, format!("slot {slot} out of range")))?;
        {
            let _g = sh.dev.enter()?;
            driver::stream_wait(self.stream, ev)?;
        }
        Ok(CudaFrame {
            base: sh.memory.ptr() + u64::from(slot) * sh.area.header.slot_stride,
            frame: Some(frame),
            shared: self.shared.clone(),
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

impl Drop for CudaSubscriber {
    fn drop(&mut self) {
        self.shared.subscriber_alive.store(false, Ordering::Release);
        if let Ok(_g) = self.shared.dev.enter() {
            // Released frames' reads may still run; once we deregister the
            // publisher stops waiting on our release events.
            let _ = driver::synchronize(self.stream);
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

fn random_tag() -> u64 {
    let mut b = [0u8; 8];
    // getrandom never blocks after boot; fall back to time and pid.
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        b = (cuframes::now_ns() ^ u64::from(std::process::id()).rotate_left(32)).to_ne_bytes();
    }
    u64::from_ne_bytes(b) | 1
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
/// is released (or dropped). Release records this subscriber's release
/// event for the slot on the consumer stream, so the publisher's next write
/// to it waits for every read enqueued before.
pub struct CudaFrame {
    base: DevicePtr,
    frame: Option<Frame>,
    shared: Arc<Shared>,
    stream: RawStream,
    /// Other streams made to read the frame ([`CudaFrame::use_on`]); the
    /// release waits for them too.
    readers: std::sync::Mutex<Vec<usize>>,
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
        driver::synchronize(self.stream)?;
        Ok(out)
    }

    /// Lets `stream` read the frame too: it waits (on the GPU) for the
    /// frame to be ready on the consumer stream, and the release will wait
    /// for the work it has enqueued by then. What DLPack's `stream`
    /// argument asks of a producer.
    pub fn use_on(&self, stream: RawStream) -> Result<()> {
        if stream == self.stream {
            return Ok(());
        }
        driver::order_after(&self.shared.dev, self.stream, stream)?;
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream as usize);
        Ok(())
    }

    /// Releases the frame (dropping it does the same).
    pub fn release(self) {}
}

impl Drop for CudaFrame {
    fn drop(&mut self) {
        let slot = self.slot() as usize;
        if let Ok(_g) = self.shared.dev.enter() {
            let readers = std::mem::take(self.readers.get_mut().unwrap_or_else(|p| p.into_inner()));
            for r in readers {
                let _ = driver::order_after(&self.shared.dev, r as RawStream, self.stream);
            }
            if let Some(ev) = self.shared.release_events.get(slot) {
                let _ = driver::record(ev, self.stream);
            }
            if !self.shared.subscriber_alive.load(Ordering::Acquire) {
                // This may be the last hold on the record: deregistering
                // ends the publisher's waits on us, so finish reads first.
                let _ = driver::synchronize(self.stream);
            }
        }
        // Clears our lease bit (after the record above).
        self.frame.take();
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
