//! The backend area of a CUDA stream: what a subscriber needs to reach the
//! publisher's device memory, and the counters that order GPU work across
//! processes. Byte layout in `docs/cuda.md`.
//!
//! The publisher writes the header before the stream becomes visible; after
//! that it never changes. The sync region (page-aligned, after the header)
//! holds 64-bit counters that every process registers with the driver
//! (`cuMemHostRegister`), so GPU streams write and wait on them
//! (`cuStreamWriteValue64` / `cuStreamWaitValue64`) while the CPU reads
//! them: the publisher's per-slot publish counters and each subscriber
//! row's per-slot release counters.

use cuframes::core::{MemoryKind, SegmentInfo, MAX_SLOTS, MAX_SUBSCRIBERS};
use cuframes::{Error, ErrorCode, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of a CUDA backend area.
pub const AREA_MAGIC: [u8; 8] = *b"CFCUDA\0\0";
/// Layout version written by this crate; readers accept only this one.
pub const AREA_VERSION: u32 = 2;
/// Offset of the sync region in the area: one page, so the region can be
/// registered with the driver on its own.
pub const SYNC_OFFSET: u64 = 4096;

/// How the slot memory is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExportMode {
    /// `cuMemAlloc` + `cuIpcGetMemHandle`; the handle is in the area.
    Ipc,
    /// `cuMemCreate` + a POSIX file descriptor sent over the stream's unix
    /// socket (SCM_RIGHTS, peer-credential checked).
    VmmFd,
}

impl ExportMode {
    /// `"ipc"` or `"vmm-fd"`, for listings (`cuframes ls`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipc => "ipc",
            Self::VmmFd => "vmm-fd",
        }
    }

    /// The segment memory kind that announces this mode.
    pub fn memory_kind(self) -> MemoryKind {
        match self {
            Self::Ipc => MemoryKind::CudaIpc,
            Self::VmmFd => MemoryKind::CudaVmmFd,
        }
    }

    /// The mode a memory kind announces (`None` for host memory).
    pub fn from_memory_kind(kind: MemoryKind) -> Option<Self> {
        match kind {
            MemoryKind::CudaIpc => Some(Self::Ipc),
            MemoryKind::CudaVmmFd => Some(Self::VmmFd),
            MemoryKind::Host => None,
        }
    }

    fn from_u32(v: u32) -> Option<Self> {
        MemoryKind::from_u32(v).and_then(Self::from_memory_kind)
    }
}

impl std::fmt::Display for ExportMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed header at the start of the backend area (256 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct AreaHeader {
    /// [`AREA_MAGIC`].
    pub magic: [u8; 8],
    /// [`AREA_VERSION`].
    pub version: u32,
    /// `size_of::<AreaHeader>()` (256).
    pub header_len: u32,
    /// Export mode as a memory-kind number (2 = ipc, 3 = vmm-fd).
    pub mode: u32,
    /// Zero; a reader refuses unknown flags.
    pub flags: u32,
    /// Device ordinal in the publisher's process.
    pub device_ordinal: u32,
    /// Slots in the ring (equals the segment's slot count).
    pub slot_count: u32,
    /// Device UUID (equals the segment header's).
    pub device_uuid: [u8; 16],
    /// Bytes of the device allocation (a multiple of the VMM granularity
    /// in vmm-fd mode).
    pub alloc_bytes: u64,
    /// Bytes from one slot to the next in device memory.
    pub slot_stride: u64,
    /// Subscriber records (equals the segment's; rows of the release table).
    pub subscriber_capacity: u32,
    /// Row alignment of the planes (power of two, >= 256).
    pub pitch_align: u32,
    /// Offset (in the area) of the sync region: [`SYNC_OFFSET`]. The
    /// publish table (one u64 per slot) starts there.
    pub sync_offset: u64,
    /// Offset of the release table (inside the sync region).
    pub release_offset: u64,
    /// Bytes per release-table row: `16 * slot_count` rounded up to 64.
    pub release_stride: u64,
    /// Bytes of the area in use: `sync_offset + sync_len`.
    pub area_len: u64,
    /// Bytes of the sync region, a multiple of 4096.
    pub sync_len: u64,
    /// Zero.
    pub reserved0: [u8; 16],
    /// `CUipcMemHandle` of the allocation (ipc mode; zero in vmm-fd mode).
    pub mem_handle: [u8; 64],
    /// Zero.
    pub reserved1: [u8; 64],
}

const HEADER_LEN: u64 = 256;

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
const _: () = assert!(std::mem::size_of::<AreaHeader>() as u64 == HEADER_LEN);

/// A validated backend area header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaInfo {
    /// The header, copied out of shared memory.
    pub header: AreaHeader,
    /// Its decoded export mode.
    pub mode: ExportMode,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::new(
        ErrorCode::Corrupt,
        format!("CUDA backend area: {}", what.into()),
    )
}

impl AreaHeader {
    /// Plans an area for a ring (offsets of the tables, `area_len`);
    /// `alloc_bytes` and `mem_handle` are left for the caller to fill.
    /// Public for tools and tests that build areas.
    pub fn plan(
        mode: ExportMode,
        slot_count: u32,
        subscriber_capacity: u32,
        slot_stride: u64,
        pitch_align: u32,
        device_ordinal: u32,
        device_uuid: [u8; 16],
    ) -> AreaHeader {
        let release_offset = SYNC_OFFSET + round_up(u64::from(slot_count) * 8, 64);
        let release_stride = round_up(u64::from(slot_count) * 16, 64);
        let sync_end = release_offset + u64::from(subscriber_capacity) * release_stride;
        let sync_len = round_up(sync_end - SYNC_OFFSET, 4096);
        AreaHeader {
            magic: AREA_MAGIC,
            version: AREA_VERSION,
            header_len: HEADER_LEN as u32,
            mode: mode.memory_kind() as u32,
            flags: 0,
            device_ordinal,
            slot_count,
            device_uuid,
            alloc_bytes: 0,
            slot_stride,
            subscriber_capacity,
            pitch_align,
            sync_offset: SYNC_OFFSET,
            release_offset,
            release_stride,
            area_len: SYNC_OFFSET + sync_len,
            sync_len,
            reserved0: [0; 16],
            mem_handle: [0; 64],
            reserved1: [0; 64],
        }
    }
}

/// Reads and validates a backend area on its own (as `cuframes ls` would):
/// any bytes give `Ok` or a typed error (`Corrupt` for malformed,
/// `Incompatible` for another layout version), never a panic.
///
/// ```
/// use cuframes_cuda::parse_area;
/// let e = parse_area(&[0u8; 300]).unwrap_err();
/// assert_eq!(e.code(), cuframes::ErrorCode::Corrupt);
/// ```
pub fn parse_area(area: &[u8]) -> Result<AreaInfo> {
    let (h, _) = AreaHeader::read_from_prefix(area)
        .map_err(|_| corrupt(format!("{} bytes, too small for its header", area.len())))?;
    if h.magic != AREA_MAGIC {
        return Err(corrupt("bad magic"));
    }
    if h.version != AREA_VERSION {
        return Err(Error::new(
            ErrorCode::Incompatible,
            format!(
                "CUDA backend area version {} (this build reads {AREA_VERSION})",
                h.version
            ),
        ));
    }
    if u64::from(h.header_len) != HEADER_LEN {
        return Err(corrupt(format!("header_len {}", h.header_len)));
    }
    let mode = ExportMode::from_u32(h.mode).ok_or_else(|| corrupt(format!("mode {}", h.mode)))?;
    if h.flags != 0 {
        return Err(Error::new(
            ErrorCode::Incompatible,
            format!("CUDA backend area flags {:#x} not understood", h.flags),
        ));
    }
    if !(2..=MAX_SLOTS).contains(&h.slot_count) {
        return Err(corrupt(format!("slot_count {}", h.slot_count)));
    }
    if !(1..=MAX_SUBSCRIBERS).contains(&h.subscriber_capacity) {
        return Err(corrupt(format!(
            "subscriber_capacity {}",
            h.subscriber_capacity
        )));
    }
    if !h.pitch_align.is_power_of_two() || !(256..=1 << 20).contains(&h.pitch_align) {
        return Err(corrupt(format!("pitch_align {}", h.pitch_align)));
    }
    let slots = u64::from(h.slot_count);
    if h.slot_stride == 0 || h.slot_stride % u64::from(h.pitch_align) != 0 {
        return Err(corrupt(format!("slot_stride {}", h.slot_stride)));
    }
    let needed = h
        .slot_stride
        .checked_mul(slots)
        .ok_or_else(|| corrupt("slot_stride * slot_count overflows"))?;
    if h.alloc_bytes < needed {
        return Err(corrupt(format!(
            "allocation of {} bytes cannot hold {} slots of {} bytes",
            h.alloc_bytes, h.slot_count, h.slot_stride
        )));
    }
    // The sync region's shape is fixed by the geometry: any other value is
    // a corrupt or hostile area.
    let plan = AreaHeader::plan(
        mode,
        h.slot_count,
        h.subscriber_capacity,
        h.slot_stride,
        h.pitch_align,
        h.device_ordinal,
        h.device_uuid,
    );
    if (
        h.sync_offset,
        h.release_offset,
        h.release_stride,
        h.sync_len,
        h.area_len,
    ) != (
        plan.sync_offset,
        plan.release_offset,
        plan.release_stride,
        plan.sync_len,
        plan.area_len,
    ) {
        return Err(corrupt("sync region offsets differ from the geometry's"));
    }
    if h.area_len > area.len() as u64 {
        return Err(corrupt("area longer than its bytes"));
    }
    let handle_set = h.mem_handle.iter().any(|&b| b != 0);
    if handle_set != (mode == ExportMode::Ipc) {
        return Err(corrupt("memory handle does not match the export mode"));
    }
    Ok(AreaInfo { header: h, mode })
}

impl AreaInfo {
    /// Cross-checks the area against its (validated) segment: same memory
    /// kind, slot count, subscriber capacity and device; every plane fits
    /// its slot and is aligned to `pitch_align`.
    pub fn check_segment(&self, seg: &SegmentInfo) -> Result<()> {
        let h = &self.header;
        let s = &seg.header;
        if self.mode.memory_kind() != seg.memory {
            return Err(corrupt(
                "export mode differs from the segment's memory kind",
            ));
        }
        if h.slot_count != s.slot_count || h.subscriber_capacity != s.subscriber_capacity {
            return Err(corrupt("ring geometry differs from the segment's"));
        }
        if h.device_uuid != s.device_uuid || h.slot_stride != s.slot_stride {
            return Err(corrupt("device or slot stride differs from the segment's"));
        }
        if h.area_len > s.backend_len {
            return Err(corrupt("area longer than the backend area"));
        }
        let layout = &s.layout;
        if layout.slot_bytes > h.slot_stride {
            return Err(corrupt("a slot does not fit its stride"));
        }
        let a = u64::from(h.pitch_align);
        for p in layout.planes() {
            if p.offset % a != 0 || u64::from(p.pitch) % a != 0 {
                return Err(corrupt("a plane is not aligned to pitch_align"));
            }
        }
        Ok(())
    }
}

/// Copies `len` bytes of shared memory into a private buffer (volatile
/// reads: another process may be writing, we only need a snapshot to
/// validate).
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn snapshot(ptr: *const u8, len: usize) -> Vec<u8> {
    (0..len)
        // SAFETY: in bounds by the caller's guarantee.
        .map(|i| unsafe { ptr.add(i).read_volatile() })
        .collect()
}

/// The sync region as one process sees it: host addresses of the counters
/// (for the CPU) and the device address the driver gave the same bytes
/// (for stream memory operations). Every word is an aligned 64-bit atomic.
///
/// - `publish(s)`: seq of the last frame whose writes into slot `s` are
///   complete (written by the publisher's stream after them).
/// - `requested(i, s)`: releases of slot `s` that subscriber row `i` has
///   asked for (CPU, by the row's owner, before its lease is cleared).
/// - `done(i, s)`: releases of slot `s` by row `i` whose reads are complete
///   (written by the subscriber's stream after them).
#[derive(Clone, Copy)]
pub(crate) struct SyncTable {
    host: *mut u8,
    device: u64,
    header: AreaHeader,
}

// SAFETY: the table only holds addresses; every access is atomic.
unsafe impl Send for SyncTable {}
// SAFETY: as above.
unsafe impl Sync for SyncTable {}

impl SyncTable {
    /// The table of an area at `area` whose sync region the driver maps at
    /// `device`.
    ///
    /// # Safety
    /// `area` must point to a live, page-aligned backend area laid out as
    /// `header` says (validated by [`parse_area`] or planned here), staying
    /// mapped while the table is used.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn new(area: *mut u8, device: u64, header: &AreaHeader) -> SyncTable {
        SyncTable {
            host: area,
            device,
            header: *header,
        }
    }

    /// Host address of the sync region (what gets registered).
    pub fn region(&self) -> (*mut u8, usize) {
        // SAFETY: sync_offset is inside the area (validated).
        let p = unsafe { self.host.add(self.header.sync_offset as usize) };
        (p, self.header.sync_len as usize)
    }

    fn offset_publish(&self, slot: u32) -> u64 {
        assert!(slot < self.header.slot_count, "slot out of range");
        self.header.sync_offset + u64::from(slot) * 8
    }

    fn offset_row(&self, row: u32, slot: u32, done: bool) -> u64 {
        assert!(
            row < self.header.subscriber_capacity && slot < self.header.slot_count,
            "row or slot out of range"
        );
        let slots = u64::from(self.header.slot_count);
        self.header.release_offset
            + u64::from(row) * self.header.release_stride
            + (u64::from(done) * slots + u64::from(slot)) * 8
    }

    fn word(&self, off: u64) -> &AtomicU64 {
        // SAFETY: every offset comes from `offset_*`, inside the sync
        // region (range-checked there), 8-aligned because the area is
        // page-aligned and every table offset a multiple of 8; the words
        // are shared and only ever accessed atomically.
        unsafe { &*self.host.add(off as usize).cast::<AtomicU64>() }
    }

    fn device_at(&self, off: u64) -> u64 {
        self.device + (off - self.header.sync_offset)
    }

    /// The publish counter of `slot`.
    pub fn publish(&self, slot: u32) -> &AtomicU64 {
        self.word(self.offset_publish(slot))
    }
    /// Its device address.
    pub fn publish_device(&self, slot: u32) -> u64 {
        self.device_at(self.offset_publish(slot))
    }
    /// Row `row`'s requested releases of `slot`.
    pub fn requested(&self, row: u32, slot: u32) -> &AtomicU64 {
        self.word(self.offset_row(row, slot, false))
    }
    /// Row `row`'s completed releases of `slot`.
    pub fn done(&self, row: u32, slot: u32) -> &AtomicU64 {
        self.word(self.offset_row(row, slot, true))
    }
    /// Device address of [`done`](Self::done).
    pub fn done_device(&self, row: u32, slot: u32) -> u64 {
        self.device_at(self.offset_row(row, slot, true))
    }

    /// Whether every release row `row` asked for on `slot` is complete;
    /// `Err(requested)` if not.
    pub fn released(&self, row: u32, slot: u32) -> std::result::Result<(), u64> {
        let want = self.requested(row, slot).load(Ordering::Acquire);
        if self.done(row, slot).load(Ordering::Acquire) >= want {
            Ok(())
        } else {
            Err(want)
        }
    }

    /// Declares row `row`'s requested releases complete (their reader is
    /// gone: its GPU work died with it). Returns how many slots had
    /// pending releases.
    pub fn settle_row(&self, row: u32) -> u32 {
        let mut n = 0;
        for slot in 0..self.header.slot_count {
            if let Err(want) = self.released(row, slot) {
                self.done(row, slot).fetch_max(want, Ordering::AcqRel);
                n += 1;
            }
        }
        n
    }

    /// Slot count and row count of the table.
    pub fn shape(&self) -> (u32, u32) {
        (self.header.slot_count, self.header.subscriber_capacity)
    }
}
