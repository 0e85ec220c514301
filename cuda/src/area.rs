//! The backend area of a CUDA stream: what a subscriber needs to reach the
//! publisher's device memory and events. Byte layout in `docs/cuda.md`.
//!
//! The publisher writes the header and its publish-event handles before
//! the stream becomes visible; after that they never change. The release
//! table belongs to the subscribers: each writes its release-event handles
//! into the row of its record, with 64-bit atomics and a seqlock-style tag
//! so the publisher never reads a half-written row.

use cuframes::core::{MemoryKind, SegmentInfo, MAX_SLOTS, MAX_SUBSCRIBERS};
use cuframes::{Error, ErrorCode, Result};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of a CUDA backend area.
pub const AREA_MAGIC: [u8; 8] = *b"CFCUDA\0\0";
/// Layout version written by this crate; readers accept only this one.
pub const AREA_VERSION: u32 = 1;
/// Bytes of one IPC handle (`CUipcMemHandle` / `CUipcEventHandle`).
pub const HANDLE_LEN: usize = 64;
/// Bytes of the row header in the release table.
pub const RELEASE_ROW_HEADER: u64 = 64;

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
    /// Offset (in the area) of the publish-event handles, one per slot.
    pub publish_events_offset: u64,
    /// Offset of the release table.
    pub release_offset: u64,
    /// Bytes per release-table row: 64 + 64 * slot_count.
    pub release_stride: u64,
    /// Bytes of the area in use (<= the segment's backend_len).
    pub area_len: u64,
    /// Zero.
    pub reserved0: [u8; 24],
    /// `CUipcMemHandle` of the allocation (ipc mode; zero in vmm-fd mode).
    pub mem_handle: [u8; 64],
    /// Zero.
    pub reserved1: [u8; 64],
}

const HEADER_LEN: u64 = 256;
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
        let publish_events_offset = HEADER_LEN;
        let release_offset = publish_events_offset + u64::from(slot_count) * HANDLE_LEN as u64;
        let release_stride = RELEASE_ROW_HEADER + u64::from(slot_count) * HANDLE_LEN as u64;
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
            publish_events_offset,
            release_offset,
            release_stride,
            area_len: release_offset + u64::from(subscriber_capacity) * release_stride,
            reserved0: [0; 24],
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
    let handles = slots * HANDLE_LEN as u64;
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
    if h.release_stride != RELEASE_ROW_HEADER + handles {
        return Err(corrupt(format!("release_stride {}", h.release_stride)));
    }
    let events_end = h
        .publish_events_offset
        .checked_add(handles)
        .ok_or_else(|| corrupt("publish events overflow"))?;
    let release_end = h
        .release_stride
        .checked_mul(u64::from(h.subscriber_capacity))
        .and_then(|n| n.checked_add(h.release_offset))
        .ok_or_else(|| corrupt("release table overflows"))?;
    if h.publish_events_offset < HEADER_LEN
        || h.publish_events_offset % 64 != 0
        || h.release_offset % 64 != 0
        || h.release_offset < events_end
        || h.area_len < release_end
        || h.area_len > area.len() as u64
    {
        return Err(corrupt("tables outside the area or overlapping"));
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

    /// Publish-event handle of `slot`, read from a private copy of the area.
    pub(crate) fn publish_handle(&self, area: &[u8], slot: u32) -> [u8; 64] {
        let off = (self.header.publish_events_offset + u64::from(slot) * 64) as usize;
        let mut h = [0u8; 64];
        h.copy_from_slice(&area[off..off + 64]);
        h
    }
}

/// Copies `len` bytes of shared memory into a private buffer (volatile
/// reads: another process may be writing, we only need a snapshot to
/// validate).
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes.
pub(crate) unsafe fn snapshot(ptr: *const u8, len: usize) -> Vec<u8> {
    (0..len)
        // SAFETY: in bounds by the caller's guarantee.
        .map(|i| unsafe { ptr.add(i).read_volatile() })
        .collect()
}

/// One row of the release table, in shared memory: `tag` (0 = empty),
/// `owner` (the record generation of the claim that wrote it: unique per
/// record for the life of the segment), then one event handle per slot,
/// all accessed as 64-bit atomics.
pub(crate) struct ReleaseRow {
    words: *const AtomicU64,
    slot_count: u32,
}

impl ReleaseRow {
    /// The row of subscriber record `index`.
    ///
    /// # Safety
    /// `area` must point to a live, 64-byte aligned backend area laid out
    /// as `info` says, staying mapped while the row is used; `index` must
    /// be below the subscriber capacity.
    pub unsafe fn at(area: *mut u8, info: &AreaHeader, index: u32) -> ReleaseRow {
        let off = info.release_offset + u64::from(index) * info.release_stride;
        ReleaseRow {
            // SAFETY: inside the area by the caller's guarantee; 8-aligned
            // because the area and every offset in it are 64-aligned.
            words: unsafe { area.add(off as usize) }.cast(),
            slot_count: info.slot_count,
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `i` < 8 + 8 * slot_count, the row's length in words
        // (callers index within it); the memory is shared and only ever
        // accessed atomically.
        unsafe { &*self.words.add(i) }
    }

    /// Publishes this subscriber's handles: clear the tag, write, set it.
    pub fn publish(&self, owner: u64, handles: &[[u8; 64]], tag: u64) {
        self.word(0).store(0, Ordering::Release);
        fence(Ordering::Release);
        self.word(1).store(owner, Ordering::Relaxed);
        for (slot, h) in handles.iter().enumerate().take(self.slot_count as usize) {
            for (k, chunk) in h.chunks_exact(8).enumerate() {
                let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
                self.word(8 + slot * 8 + k).store(v, Ordering::Relaxed);
            }
        }
        self.word(0).store(tag, Ordering::Release);
    }

    /// Current tag and owner.
    pub fn tag_owner(&self) -> (u64, u64) {
        let tag = self.word(0).load(Ordering::Acquire);
        (tag, self.word(1).load(Ordering::Relaxed))
    }

    /// The release-event handle of `slot` if the row still carries `tag`.
    pub fn handle(&self, slot: u32, tag: u64) -> Option<[u8; 64]> {
        if slot >= self.slot_count {
            return None;
        }
        let mut h = [0u8; 64];
        for k in 0..8 {
            let v = self.word(8 + slot as usize * 8 + k).load(Ordering::Relaxed);
            h[k * 8..k * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        fence(Ordering::Acquire);
        (self.word(0).load(Ordering::Relaxed) == tag).then_some(h)
    }
}
