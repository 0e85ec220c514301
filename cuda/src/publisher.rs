//! The CUDA publisher: frames in one device allocation, handed out by the
//! host ring.

use crate::area::{AreaHeader, ExportMode, SyncTable};
use crate::driver::{self, call, Device, DevicePtr, Event, RawStream, Stream};
use crate::fdpass::{self, FdServer, PeerPolicy};
use crate::memory::{vmm_granularity, HostRegistration, Legacy, Pinned, Vmm};
use cudarc::driver::sys;
use cuframes::core::{Backend, PixelFormat};
use cuframes::MappingGuard;
use cuframes::{Error, ErrorCode, FrameLayout, Publisher, PublisherOptions, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

/// Which export the publisher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportRequest {
    /// VMM + file descriptor where the device supports it, else legacy IPC.
    #[default]
    Auto,
    /// Legacy `cuIpcGetMemHandle` (needs subscribers in the same IPC and
    /// pid namespaces, as CUDA IPC always does).
    Ipc,
    /// `cuMemCreate` exported as a file descriptor over a unix socket.
    VmmFd,
}

/// CUDA publisher settings.
///
/// ```
/// use cuframes_cuda::{CudaPublisherOptions, ExportRequest};
/// let o = CudaPublisherOptions { device: 0, export: ExportRequest::Ipc, ..Default::default() };
/// assert_eq!(o.pitch_align, 512);
/// ```
#[derive(Debug, Clone)]
pub struct CudaPublisherOptions {
    /// The host ring's settings (slots, subscribers, policy, timeouts,
    /// file mode). Its `pitch_align` is ignored: see
    /// [`pitch_align`](Self::pitch_align).
    pub ring: PublisherOptions,
    /// CUDA device ordinal.
    pub device: u32,
    /// Export mode.
    pub export: ExportRequest,
    /// Row (and plane) alignment in device memory: a power of two, at
    /// least 256 (NVDEC and NPP want 256 or 512).
    pub pitch_align: u32,
    /// How long dropping the publisher waits for subscribers to finish
    /// reading and detach before it frees the device memory. In ipc mode,
    /// memory that live subscribers still map after this is not freed (the
    /// driver reclaims it when the process exits): freeing it under an
    /// importer is undefined.
    pub close_grace: Duration,
}

impl Default for CudaPublisherOptions {
    fn default() -> Self {
        Self {
            ring: PublisherOptions::default(),
            device: 0,
            export: ExportRequest::Auto,
            pitch_align: 512,
            close_grace: Duration::from_secs(2),
        }
    }
}

enum Memory {
    Legacy(Legacy),
    Vmm(Vmm),
}

impl Memory {
    fn ptr(&self) -> DevicePtr {
        match self {
            Memory::Legacy(m) => m.ptr,
            Memory::Vmm(m) => m.ptr,
        }
    }
}

/// Device addresses and pitch of each plane of a loaned slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevicePlane {
    /// Address of the plane's first row.
    pub ptr: DevicePtr,
    /// Bytes from one row to the next.
    pub pitch: u32,
    /// Meaningful bytes per row.
    pub row_bytes: u32,
    /// Rows.
    pub rows: u32,
}

/// A slot loaned by [`CudaPublisher::loan_detached`], for bindings.
#[derive(Debug, Clone, Copy)]
pub struct CudaDetachedLease {
    /// The seq the frame will get.
    pub seq: u64,
    /// The slot index.
    pub slot: u32,
    /// Planes (the first `plane_count` are meaningful).
    pub planes: [DevicePlane; 4],
    /// Number of planes.
    pub plane_count: usize,
    /// The stream writes must be ordered on (see [`CudaPublisher::stream`]).
    pub stream: RawStream,
}

/// Publishes frames that live in GPU memory. All slots are one device
/// allocation, exported once; subscribers ([`crate::CudaSubscriber`]) open
/// it once and read every frame in place.
///
/// Ordering is on the GPU, never the CPU, through counters in shared host
/// memory that every process maps for its GPU: before a slot is handed out
/// for writing, the publisher's stream waits until every subscriber's
/// reads of it are complete; committing makes the stream write the frame's
/// seq into the slot's publish counter, which subscribers' streams wait on.
/// These cross pid namespaces (nothing but the shared segment is needed).
///
/// ```no_run
/// use cuframes_cuda::{CudaPublisher, CudaPublisherOptions};
/// use cuframes::PixelFormat;
/// let mut p = CudaPublisher::create("cam0", PixelFormat::Nv12, 1920, 1080, CudaPublisherOptions::default())?;
/// // A decoder writes in place on the publisher's stream...
/// let lease = p.loan()?;
/// let (y, uv) = (lease.plane(0), lease.plane(1));
/// // ... enqueue NVDEC/NPP work writing y.ptr / uv.ptr on lease.stream() ...
/// lease.commit(0)?;
/// // ... or copy tightly packed host bytes in.
/// p.publish_from_host(&vec![0u8; 1920 * 1080 * 3 / 2], 40_000_000)?;
/// # Ok::<(), cuframes::Error>(())
/// ```
pub struct CudaPublisher {
    // Drop (below) closes the ring, waits for subscribers, then lets the
    // fields go in this order: the registration before the ring's mapping.
    server: Option<FdServer>,
    /// Settles dead readers' releases while this thread may be blocked.
    settler: Option<Settler>,
    /// The loaned slot, the seq it will get, and the stream its writes are
    /// ordered on (the commit marks it there, whatever `set_stream` does
    /// meanwhile).
    pending: Option<(u32, u64, RawStream)>,
    sync: SyncTable,
    /// Page-locked buffers uploads are staged in (made on first use).
    staging: Option<Staging>,
    registration: Option<HostRegistration>,
    inner: Option<Publisher>,
    own_stream: Option<Stream>,
    stream: RawStream,
    memory: Option<Memory>,
    area: AreaHeader,
    mode: ExportMode,
    layout: FrameLayout,
    close_grace: Duration,
    dev: Arc<Device>,
}

// SAFETY: the raw stream is a driver handle usable from any thread with
// the context current (every use enters it); everything else is Send.
unsafe impl Send for CudaPublisher {}

fn invalid(m: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, m)
}

impl CudaPublisher {
    /// Creates stream `key` for frames of `format` and size on a GPU,
    /// planes pitched to `options.pitch_align`. Errors: `Cuda` (no driver,
    /// no such device, out of memory: the driver's message),
    /// `InvalidArgument`, `AlreadyExists`, `Io`.
    pub fn create(
        key: &str,
        format: PixelFormat,
        width: u32,
        height: u32,
        options: CudaPublisherOptions,
    ) -> Result<Self> {
        let a = options.pitch_align;
        if !a.is_power_of_two() || !(256..=1 << 20).contains(&a) {
            return Err(invalid(format!(
                "pitch_align {a}: must be a power of two from 256 to 1 MiB"
            )));
        }
        let layout = FrameLayout::new(format, width, height, a)?;
        Self::create_with_layout(key, layout, options)
    }

    /// Creates a stream with an explicit layout, whose plane offsets and
    /// pitches must be multiples of `options.pitch_align`.
    pub fn create_with_layout(
        key: &str,
        layout: FrameLayout,
        options: CudaPublisherOptions,
    ) -> Result<Self> {
        cuframes::validate_key(key)?;
        layout.validate()?;
        let align = options.pitch_align;
        if !align.is_power_of_two() || !(256..=1 << 20).contains(&align) {
            return Err(invalid(format!("pitch_align {align}")));
        }
        if layout
            .planes()
            .iter()
            .any(|p| p.offset % u64::from(align) != 0 || p.pitch % align != 0)
        {
            return Err(invalid(format!(
                "every plane offset and pitch must be a multiple of {align} bytes"
            )));
        }
        let ring = &options.ring;
        if !(2..=cuframes::core::MAX_SLOTS).contains(&ring.slot_count) {
            return Err(invalid(format!("slot_count {}", ring.slot_count)));
        }
        if !(1..=cuframes::core::MAX_SUBSCRIBERS).contains(&ring.subscriber_capacity) {
            return Err(invalid(format!(
                "subscriber_capacity {}",
                ring.subscriber_capacity
            )));
        }
        let dev = Device::open(options.device)?;
        let _g = dev.enter()?;
        dev.check_stream_memory_ops()?;
        let mode = match options.export {
            ExportRequest::Ipc => ExportMode::Ipc,
            ExportRequest::VmmFd => ExportMode::VmmFd,
            ExportRequest::Auto => {
                let vmm = dev.attribute(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED,
                )?;
                let fd = dev.attribute(
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                )?;
                if vmm != 0 && fd != 0 && fdpass::socket_path(key).is_ok() {
                    ExportMode::VmmFd
                } else {
                    ExportMode::Ipc
                }
            }
        };
        let socket = match mode {
            ExportMode::VmmFd => Some(fdpass::socket_path(key)?),
            ExportMode::Ipc => None,
        };
        let slot_align = u64::from(align).max(4096);
        let slot_stride = layout
            .slot_bytes
            .checked_add(slot_align - 1)
            .map(|v| v & !(slot_align - 1))
            .ok_or_else(|| invalid("frame too large"))?;
        let needed = slot_stride
            .checked_mul(u64::from(ring.slot_count))
            .ok_or_else(|| invalid("ring too large"))?;
        let mut area = AreaHeader::plan(
            mode,
            ring.slot_count,
            ring.subscriber_capacity,
            slot_stride,
            align,
            dev.ordinal,
            dev.uuid,
        );
        let (memory, export_fd) = match mode {
            ExportMode::Ipc => {
                let (m, h) = Legacy::alloc(&dev, needed)?;
                area.mem_handle = h;
                area.alloc_bytes = m.bytes;
                (Memory::Legacy(m), None)
            }
            ExportMode::VmmFd => {
                let g = vmm_granularity(&dev)?;
                let bytes = needed
                    .checked_add(g - 1)
                    .map(|v| v & !(g - 1))
                    .ok_or_else(|| invalid("ring too large"))?;
                let (m, fd) = Vmm::create(&dev, bytes)?;
                area.alloc_bytes = m.bytes;
                (Memory::Vmm(m), Some(fd))
            }
        };
        let stream = Stream::new(&dev)?;
        // Subscribers never see bytes of an earlier owner of this memory.
        // SAFETY: the range is our allocation; the stream is ours.
        call("cuMemsetD8Async", || unsafe {
            sys::cuMemsetD8Async(memory.ptr(), 0, area.alloc_bytes as usize, stream.raw)
        })?;
        driver::synchronize(stream.raw)?;
        let mut bytes = vec![0u8; area.area_len as usize];
        bytes[..256].copy_from_slice(area.as_bytes());
        let backend = Backend {
            memory: mode.memory_kind(),
            len: Some(area.area_len),
            slot_stride,
            device_uuid: dev.uuid,
            device_ordinal: dev.ordinal,
        };
        let file_mode = ring.mode;
        let inner = Publisher::create_with_backend(key, layout, ring.clone(), backend, |dst| {
            if dst.len() < bytes.len() {
                return Err(Error::new(ErrorCode::Internal, "backend area too small"));
            }
            dst[..bytes.len()].copy_from_slice(&bytes);
            Ok(())
        })?;
        let server = match (socket, export_fd) {
            (Some(path), Some(fd)) => Some(FdServer::start(
                &path,
                file_mode,
                fd,
                inner.epoch(),
                area.alloc_bytes,
                PeerPolicy::current(file_mode & 0o060 != 0),
            )?),
            _ => None,
        };
        let (area_ptr, _) = inner.backend_area();
        // SAFETY: the area is our segment's backend area, page-aligned and
        // laid out by `area`; `inner` keeps it mapped, and the registration
        // and table are dropped before it (see Drop).
        let registration = unsafe {
            let table = SyncTable::new(area_ptr, 0, &area);
            let (host, len) = table.region();
            HostRegistration::new(&dev, host, len)?
        };
        // SAFETY: as above; `registration.device` maps the sync region.
        let sync = unsafe { SyncTable::new(area_ptr, registration.device, &area) };
        drop(_g);
        Ok(Self {
            server,
            settler: Some(Settler::start(sync, inner.mapping_guard())),
            staging: None,
            pending: None,
            sync,
            registration: Some(registration),
            inner: Some(inner),
            stream: stream.raw,
            own_stream: Some(stream),
            memory: Some(memory),
            area,
            mode,
            layout,
            close_grace: options.close_grace,
            dev,
        })
    }

    fn ring(&self) -> &Publisher {
        self.inner.as_ref().expect("publisher lives until drop")
    }

    fn ring_mut(&mut self) -> &mut Publisher {
        self.inner.as_mut().expect("publisher lives until drop")
    }

    /// The host-side publisher (key, epoch, stats, segment info).
    pub fn host(&self) -> &Publisher {
        self.ring()
    }

    /// Closes the stream for subscribers (they drain and get `Closed`)
    /// while this publisher, and so its GPU memory, stays alive: for
    /// bindings whose views of a slot may outlive the close. Dropping it
    /// does the rest.
    pub fn close_ring(&mut self) {
        self.abort_detached();
        self.ring_mut().close_keep_mapped();
    }

    /// The export mode in use.
    pub fn export_mode(&self) -> ExportMode {
        self.mode
    }

    /// The frame layout (plane offsets and pitches within a slot).
    pub fn layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// The CUDA device ordinal.
    pub fn device(&self) -> u32 {
        self.dev.ordinal
    }

    /// Base address of the allocation holding every slot.
    pub fn device_base(&self) -> DevicePtr {
        self.memory.as_ref().map_or(0, Memory::ptr)
    }

    /// Bytes from one slot to the next in device memory.
    pub fn slot_stride(&self) -> u64 {
        self.area.slot_stride
    }

    /// Device address of `slot`'s first byte (`None` past the ring).
    pub fn slot_ptr(&self, slot: u32) -> Option<DevicePtr> {
        (slot < self.area.slot_count)
            .then(|| self.device_base() + u64::from(slot) * self.area.slot_stride)
    }

    /// The stream all writes are ordered on: the publisher's own
    /// (non-blocking) stream unless [`set_stream`](Self::set_stream) chose
    /// another.
    pub fn stream(&self) -> RawStream {
        self.stream
    }

    /// Orders writes on `stream` instead (a decoder's stream, say): loans
    /// make it wait for subscribers' reads; commits mark frames complete on it.
    ///
    /// # Safety
    /// `stream` must be a live stream of this device's primary context (or
    /// null for the legacy default stream) and outlive its use here.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn set_stream(&mut self, stream: RawStream) {
        self.stream = stream;
    }

    fn planes_of(&self, slot: u32) -> ([DevicePlane; 4], usize) {
        let base = self.slot_ptr(slot).unwrap_or(0);
        let mut out = [DevicePlane::default(); 4];
        let planes = self.layout.planes();
        for (o, p) in out.iter_mut().zip(planes) {
            *o = DevicePlane {
                ptr: base + p.offset,
                pitch: p.pitch,
                row_bytes: p.row_bytes,
                rows: p.rows,
            };
        }
        (out, planes.len())
    }

    /// Loans a slot for in-place writes (waiting up to the ring's block
    /// timeout for one). Writes must be enqueued on
    /// [`stream`](CudaWriteLease::stream) (or ordered after it): it already
    /// waits for subscribers to be done with the slot. Dropping the lease
    /// aborts it.
    pub fn loan(&mut self) -> Result<CudaWriteLease<'_>> {
        let d = self.loan_detached()?;
        Ok(CudaWriteLease {
            publisher: self,
            lease: d,
            done: false,
        })
    }

    /// [`loan`](Self::loan) without borrowing the publisher (for bindings):
    /// finish with [`commit_detached`](Self::commit_detached) or
    /// [`abort_detached`](Self::abort_detached).
    pub fn loan_detached(&mut self) -> Result<CudaDetachedLease> {
        let d = self.ring_mut().loan_detached()?;
        if let Err(e) = self.wait_release(d.slot) {
            self.ring_mut().abort_detached();
            return Err(e);
        }
        self.pending = Some((d.slot, d.seq, self.stream));
        let (planes, plane_count) = self.planes_of(d.slot);
        Ok(CudaDetachedLease {
            seq: d.seq,
            slot: d.slot,
            planes,
            plane_count,
            stream: self.stream,
        })
    }

    /// Makes the stream mark the loaned slot's frame complete after the
    /// writes enqueued so far, then publishes it; returns its seq.
    pub fn commit_detached(&mut self, pts_ns: i64) -> Result<u64> {
        let (slot, seq, stream) = self
            .pending
            .take()
            .ok_or_else(|| invalid("no slot is loaned"))?;
        let marked = self
            .dev
            .enter()
            .and_then(|_g| driver::write_value(stream, self.sync.publish_device(slot), seq));
        if let Err(e) = marked {
            self.ring_mut().abort_detached();
            return Err(e);
        }
        self.ring_mut().commit_detached(pts_ns)
    }

    /// [`CudaWriteLease::copy_from_device`] for a detached loan.
    ///
    /// # Safety
    /// As for [`CudaWriteLease::copy_from_device`]; `lease` must be the
    /// loan still pending.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn copy_from_device_detached(
        &self,
        lease: &CudaDetachedLease,
        src: &[DevicePlane],
        src_stream: RawStream,
    ) -> Result<()> {
        let planes = &lease.planes[..lease.plane_count];
        if self.pending.map(|(slot, _, _)| slot) != Some(lease.slot) {
            return Err(invalid("that slot is not the pending loan"));
        }
        if src.len() != planes.len() {
            return Err(invalid(format!(
                "{} source planes for a {}-plane layout",
                src.len(),
                planes.len()
            )));
        }
        for (i, (s, d)) in src.iter().zip(planes).enumerate() {
            if s.row_bytes != d.row_bytes || s.rows != d.rows || s.pitch < s.row_bytes {
                return Err(invalid(format!(
                    "source plane {i} is {} rows of {} bytes (pitch {}); the layout needs {} rows of {}",
                    s.rows, s.row_bytes, s.pitch, d.rows, d.row_bytes
                )));
            }
        }
        if src_stream != lease.stream {
            driver::order_after(&self.dev, src_stream, lease.stream)?;
        }
        let _g = self.dev.enter()?;
        for (s, d) in src.iter().zip(planes) {
            // SAFETY: the caller guarantees the source range; the
            // destination is the plane inside the loaned slot.
            unsafe {
                driver::copy_2d_device(
                    s.ptr,
                    s.pitch as usize,
                    d.ptr,
                    d.pitch as usize,
                    d.row_bytes as usize,
                    d.rows as usize,
                    lease.stream,
                )
            }?;
        }
        Ok(())
    }

    /// Gives the detached loan back unpublished; false if there was none.
    pub fn abort_detached(&mut self) -> bool {
        self.pending = None;
        self.ring_mut().abort_detached()
    }

    /// Copies a tightly packed host frame (planes in order, rows of
    /// `row_bytes`) into a slot and publishes it. The frame is staged in
    /// page-locked memory of the publisher's (one buffer per slot) and
    /// uploaded asynchronously: this returns without waiting for the GPU
    /// unless it is a whole ring of uploads behind.
    pub fn publish_from_host(&mut self, packed: &[u8], pts_ns: i64) -> Result<u64> {
        let need = self.layout.packed_bytes();
        if packed.len() as u64 != need {
            return Err(invalid(format!(
                "frame has {} bytes; the layout needs {need}",
                packed.len()
            )));
        }
        if self.staging.is_none() {
            self.staging = Some(Staging::new(
                &self.dev,
                self.area.slot_count,
                need as usize,
            )?);
        }
        let lease = self.loan_detached()?;
        let staged = self.stage_upload(&lease, packed);
        if let Err(e) = staged {
            self.abort_detached();
            return Err(e);
        }
        self.commit_detached(pts_ns)
    }

    /// Copies `packed` into the next staging buffer (waiting, on the host,
    /// only until the GPU has read its previous contents: a ring behind)
    /// and enqueues its upload into the loaned slot, asynchronously.
    fn stage_upload(&mut self, lease: &CudaDetachedLease, packed: &[u8]) -> Result<()> {
        let staging = self.staging.as_mut().expect("made above");
        let (buf, read) = staging.next();
        let _g = self.dev.enter()?;
        driver::event_wait(read)?;
        buf.bytes_mut().copy_from_slice(packed);
        upload(
            &lease.planes[..lease.plane_count],
            buf.bytes(),
            lease.stream,
        )?;
        driver::record(read, lease.stream)
    }

    /// Makes the stream wait until every subscriber's reads of `slot` are
    /// complete. A reader that died with reads pending never completes
    /// them (its GPU work died with it): its releases are settled instead,
    /// here or by the settler thread (this thread may be blocked behind the
    /// wait), so the stream never waits on the dead for long.
    fn wait_release(&mut self, slot: u32) -> Result<()> {
        let _g = self.dev.enter()?;
        let (_, rows) = self.sync.shape();
        for row in 0..rows {
            let Err(want) = self.sync.released(row, slot) else {
                continue;
            };
            if !self.ring().subscriber_alive(row) {
                settle(&self.sync, row, self.ring().key());
                continue;
            }
            driver::wait_value(self.stream, self.sync.done_device(row, slot), want)?;
        }
        Ok(())
    }

    /// Waits up to the close grace for [`readers_gone`](Self::readers_gone).
    fn wait_readers_gone(&mut self) -> bool {
        let deadline = Instant::now() + self.close_grace;
        loop {
            if self.readers_gone() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether every subscriber has detached or died and every read is
    /// complete (dead readers' releases are settled on the way).
    fn readers_gone(&mut self) -> bool {
        let Some(ring) = self.inner.as_ref() else {
            return true;
        };
        let (slots, rows) = self.sync.shape();
        let stats = ring.stats();
        let mut gone = true;
        let mut dead = Vec::new();
        for row in 0..rows {
            let pending = (0..slots).any(|s| self.sync.released(row, s).is_err());
            let attached = stats.active().any(|r| r.index == row);
            if !pending && !attached {
                continue;
            }
            if ring.subscriber_alive(row) {
                gone = false;
            } else if pending {
                dead.push(row);
            }
        }
        for row in dead {
            settle(&self.sync, row, ring.key());
        }
        gone
    }
}

/// Enqueues 2D copies of a tightly packed host picture (`packed`, whose
/// length the caller checked against the layout) into `planes` on `stream`.
/// The driver reads pageable memory at the call (and may wait for the
/// stream); page-locked memory later, when the copy runs.
fn upload(planes: &[DevicePlane], packed: &[u8], stream: RawStream) -> Result<()> {
    let mut src = 0usize;
    for p in planes {
        let (rb, rows) = (p.row_bytes as usize, p.rows as usize);
        let c = driver::Copy2d {
            host: packed[src..].as_ptr().cast_mut(),
            host_pitch: rb,
            device: p.ptr,
            device_pitch: p.pitch as usize,
            width: rb,
            height: rows,
        };
        // SAFETY: host range: `rb * rows` bytes from `src`, inside `packed`
        // (its length is the sum over planes); device range: the plane
        // inside a loaned slot; the driver only reads the host side. The
        // caller keeps `packed` unchanged until the copy has read it.
        unsafe { driver::copy_2d(&c, true, stream) }?;
        src += rb * rows;
    }
    Ok(())
}

/// A ring of page-locked buffers, each with an event recorded after the
/// upload that reads it: `publish_from_host` returns as soon as its frame
/// is staged, and waits only when the GPU is a whole ring behind.
struct Staging {
    bufs: Vec<(Pinned, Event)>,
    next: usize,
}

impl Staging {
    fn new(dev: &Arc<Device>, count: u32, len: usize) -> Result<Staging> {
        let bufs = (0..count)
            .map(|_| Ok((Pinned::new(dev, len)?, Event::local(dev)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Staging { bufs, next: 0 })
    }

    fn next(&mut self) -> (&mut Pinned, &Event) {
        let i = self.next;
        self.next = (i + 1) % self.bufs.len();
        let (buf, ev) = &mut self.bufs[i];
        (buf, ev)
    }
}

/// Settles the pending releases of subscriber record `row`, whose owner
/// is dead (its GPU work died with it), and says so.
fn settle(sync: &SyncTable, row: u32, key: &str) {
    let n = sync.settle_row(row);
    if n > 0 {
        tracing::warn!(
            key,
            record = row,
            slots = n,
            "a subscriber died with GPU reads pending; its releases are settled"
        );
    }
}

/// A thread that settles dead readers' releases every few milliseconds:
/// the publisher's own thread can be blocked behind a GPU wait on one (a
/// copy from pageable memory may wait for the stream, and so does Drop).
struct Settler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Settler {
    fn start(sync: SyncTable, guard: MappingGuard) -> Settler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cuframes-settle".into())
            .spawn(move || {
                // `guard` keeps the segment, and so the sync table, mapped.
                let (slots, rows) = sync.shape();
                while !flag.load(Ordering::Acquire) {
                    for row in 0..rows {
                        let pending = (0..slots).any(|s| sync.released(row, s).is_err());
                        if pending && !guard.subscriber_alive(row) {
                            settle(&sync, row, "");
                        }
                    }
                    std::thread::park_timeout(Duration::from_millis(10));
                }
            })
            .ok();
        Settler { stop, thread }
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A slot loaned by [`CudaPublisher::loan`]: device pointers per plane,
/// writable on [`stream`](Self::stream) until committed. Dropping it
/// aborts (nothing is published).
pub struct CudaWriteLease<'p> {
    publisher: &'p mut CudaPublisher,
    lease: CudaDetachedLease,
    done: bool,
}

impl CudaWriteLease<'_> {
    /// The seq the frame will get.
    pub fn seq(&self) -> u64 {
        self.lease.seq
    }
    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.lease.slot
    }
    /// Plane `i` (zeroed past the format's planes).
    pub fn plane(&self, i: usize) -> DevicePlane {
        self.planes().get(i).copied().unwrap_or_default()
    }
    /// The format's planes.
    pub fn planes(&self) -> &[DevicePlane] {
        &self.lease.planes[..self.lease.plane_count]
    }
    /// The stream writes must be ordered on.
    pub fn stream(&self) -> RawStream {
        self.lease.stream
    }
    /// The frame layout.
    pub fn layout(&self) -> &FrameLayout {
        &self.publisher.layout
    }

    /// Enqueues copies of a tightly packed host frame into the slot.
    pub fn copy_from_host(&self, packed: &[u8]) -> Result<()> {
        let need = self.layout().packed_bytes();
        if packed.len() as u64 != need {
            return Err(invalid(format!(
                "frame has {} bytes; the layout needs {need}",
                packed.len()
            )));
        }
        let _g = self.publisher.dev.enter()?;
        upload(self.planes(), packed, self.lease.stream)?;
        if driver::is_page_locked(packed.as_ptr()) {
            // Async copies from page-locked memory read it later.
            driver::synchronize(self.lease.stream)?;
        }
        Ok(())
    }

    /// Enqueues copies of a picture already in device memory into the
    /// slot: plane `i` from `src[i]` (its `ptr` and `pitch`; `row_bytes`
    /// and `rows` must match the layout's), after the work enqueued so far
    /// on `src_stream` (the producer's stream: a decoder's, or the stream a
    /// DLPack producer named), on the lease's stream.
    ///
    /// # Safety
    /// Each `src[i]` must address `pitch * (rows - 1) + row_bytes` readable
    /// bytes of device memory of this device's primary context, unchanged
    /// until the copy has run (order later writes after the lease's
    /// stream); `src_stream` must be a live stream of that context (or null).
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn copy_from_device(
        &self,
        src: &[DevicePlane],
        src_stream: RawStream,
    ) -> Result<()> {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            self.publisher
                .copy_from_device_detached(&self.lease, src, src_stream)
        }
    }

    /// Marks the frame complete on the stream (after the writes enqueued so
    /// far) and publishes it; returns its seq.
    pub fn commit(mut self, pts_ns: i64) -> Result<u64> {
        self.done = true;
        self.publisher.commit_detached(pts_ns)
    }
}

impl Drop for CudaWriteLease<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.publisher.abort_detached();
        }
    }
}

impl Drop for CudaPublisher {
    fn drop(&mut self) {
        // Finish our writes, so every published frame is complete (the
        // settler clears waits on dead readers meanwhile; a live reader
        // that never finishes is given the close grace), then close:
        // subscribers drain and get `Closed`.
        let deadline = Instant::now() + self.close_grace;
        let idle = self
            .dev
            .enter()
            .and_then(|_g| driver::wait_idle(self.stream, deadline, || {}))
            .unwrap_or(false);
        if let Some(ring) = self.inner.as_mut() {
            ring.close_keep_mapped();
        }
        // Legacy IPC memory must outlive every importer: wait for
        // subscribers to finish reading and detach. (VMM memory lives on
        // while any process maps it; the counters live in the segment.)
        let importers_gone = self.mode != ExportMode::Ipc || self.wait_readers_gone();
        if !idle || !importers_gone {
            // Freeing memory the GPU may still write, or that an importer
            // maps, is undefined: leave it to the driver's cleanup at
            // process exit.
            tracing::warn!(
                key = self.ring().key(),
                stream_idle = idle,
                importers_gone,
                "GPU work or subscribers still use the stream's memory after {:?}; \
                 it is left allocated until this process exits",
                self.close_grace
            );
            std::mem::forget(self.memory.take());
            std::mem::forget(self.registration.take());
            std::mem::forget(self.own_stream.take());
            std::mem::forget(self.staging.take());
        }
        self.settler.take();
        self.server.take();
        self.registration.take();
        self.inner.take();
        // The stream, then the memory, drop with the fields.
        self.own_stream.take();
    }
}

impl std::fmt::Debug for CudaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPublisher")
            .field("key", &self.inner.as_ref().map(|p| p.key().to_owned()))
            .field("device", &self.dev.ordinal)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
