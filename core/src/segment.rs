//! Planning a segment (publisher side) and validating one (everyone else).

use crate::error::{LayoutError, Region, ValidateError};
use crate::format::{FrameLayout, PixelFormat};
use crate::layout::*;
use crate::packet::{Codec, MAX_EXTRADATA, MAX_PACKET_BYTES};
use core::mem::size_of;
use zerocopy::FromBytes;

/// Ring geometry chosen by the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingParams {
    /// Number of slots (2..=[`MAX_SLOTS`]).
    pub slot_count: u32,
    /// Number of subscriber records (1..=[`MAX_SUBSCRIBERS`]).
    pub subscriber_capacity: u32,
    /// Writer policy towards lagging lossless subscribers.
    pub policy: LosslessPolicy,
    /// Writer wait limit under [`LosslessPolicy::Block`], nanoseconds.
    pub block_timeout_ns: u64,
}

impl Default for RingParams {
    fn default() -> Self {
        Self {
            slot_count: 8,
            subscriber_capacity: 16,
            policy: LosslessPolicy::Block,
            block_timeout_ns: 1_000_000_000,
        }
    }
}

/// Who created a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    /// Random per publisher instance.
    pub epoch: u64,
    /// Process id.
    pub pid: u32,
    /// Process start time (ticks since boot).
    pub start_time: u64,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// Pid namespace inode (0: unknown).
    pub pid_ns: u64,
}

/// Backend placement requested by the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Where slot data lives.
    pub memory: MemoryKind,
    /// Bytes of the backend area. Host memory: `None` computes
    /// `slot_count * slot_stride`. CUDA: room for the exported handles.
    pub len: Option<u64>,
    /// Bytes between slots (0 = `slot_bytes` rounded up to a page).
    pub slot_stride: u64,
    /// CUDA device UUID.
    pub device_uuid: [u8; 16],
    /// CUDA device ordinal.
    pub device_ordinal: u32,
}

impl Backend {
    /// Slot data in host memory, right in the segment.
    pub const HOST: Backend = Backend {
        memory: MemoryKind::Host,
        len: None,
        slot_stride: 0,
        device_uuid: [0; 16],
        device_ordinal: 0,
    };
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Index ring length for a slot count: a power of two, at least twice the
/// slots, so an unread frame's entry is never overwritten before its slot.
pub fn index_len_for(slot_count: u32) -> u32 {
    (slot_count.max(1) * 2).next_power_of_two()
}

/// What a packet stream carries, chosen by its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketParams {
    /// The codec.
    pub codec: Codec,
    /// Largest packet, bytes (1..=[`MAX_PACKET_BYTES`]).
    pub max_packet: u64,
    /// Bytes of codec configuration (extradata) to make room for.
    pub extradata_len: u32,
    /// Coded width, if known (informational; 0 unknown).
    pub width: u32,
    /// Coded height, if known (informational; 0 unknown).
    pub height: u32,
}

impl PacketParams {
    /// The [`FrameLayout`] a packet stream stores: no format, no planes,
    /// `slot_bytes` the largest packet.
    pub fn layout(&self) -> FrameLayout {
        FrameLayout {
            format: 0,
            width: self.width,
            height: self.height,
            plane_count: 0,
            planes: Default::default(),
            slot_bytes: self.max_packet,
        }
    }
}

fn check_packet_layout(l: &FrameLayout) -> Result<(), LayoutError> {
    let zero_planes = l.planes.iter().all(|p| *p == Default::default());
    if l.format != 0
        || l.plane_count != 0
        || !zero_planes
        || !(1..=MAX_PACKET_BYTES).contains(&l.slot_bytes)
        || l.width > crate::format::MAX_DIMENSION
        || l.height > crate::format::MAX_DIMENSION
    {
        return Err(LayoutError::Packets);
    }
    Ok(())
}

impl SegmentHeader {
    /// Lays out a packet stream (host memory): as [`plan`](Self::plan), with
    /// one packet of up to `packets.max_packet` bytes per slot and room for
    /// the codec configuration after the subscriber table.
    ///
    /// ```
    /// use cuframes_core::{Codec, Content, Identity, PacketParams, RingParams, SegmentHeader, SegmentInfo};
    /// let p = PacketParams { codec: Codec::H264, max_packet: 1 << 20, extradata_len: 40, width: 0, height: 0 };
    /// let h = SegmentHeader::plan_packets(&p, &RingParams::default(), &Identity::default()).unwrap();
    /// let info = SegmentInfo::check(h, h.segment_len).unwrap();
    /// assert_eq!((info.content, info.codec, info.format), (Content::Packets, Some(Codec::H264), None));
    /// ```
    pub fn plan_packets(
        packets: &PacketParams,
        ring: &RingParams,
        who: &Identity,
    ) -> Result<SegmentHeader, ValidateError> {
        check_packet_layout(&packets.layout())?;
        if packets.extradata_len > MAX_EXTRADATA {
            return Err(ValidateError::OutOfBounds(Region::Extradata));
        }
        let content = (
            Content::Packets,
            packets.codec as u32,
            packets.extradata_len,
        );
        Self::plan_with(&packets.layout(), content, ring, &Backend::HOST, who)
    }

    /// Lays out a segment: fixed header, control block, slot table, index
    /// ring, subscriber table, then the page-aligned backend area.
    ///
    /// ```
    /// use cuframes_core::{Backend, FrameLayout, Identity, PixelFormat, RingParams, SegmentHeader, SegmentInfo};
    /// use zerocopy::IntoBytes;
    /// let layout = FrameLayout::new(PixelFormat::Nv12, 64, 48, 64).unwrap();
    /// let h = SegmentHeader::plan(&layout, &RingParams::default(), &Backend::HOST, &Identity::default()).unwrap();
    /// let mut bytes = vec![0u8; h.segment_len as usize];
    /// bytes[..384].copy_from_slice(h.as_bytes());
    /// let info = SegmentInfo::validate(&bytes).unwrap();
    /// assert_eq!(info.header.slot_count, 8);
    /// ```
    pub fn plan(
        layout: &FrameLayout,
        ring: &RingParams,
        backend: &Backend,
        who: &Identity,
    ) -> Result<SegmentHeader, ValidateError> {
        layout.validate()?;
        Self::plan_with(layout, (Content::Frames, 0, 0), ring, backend, who)
    }

    fn plan_with(
        layout: &FrameLayout,
        (content, codec, extradata_len): (Content, u32, u32),
        ring: &RingParams,
        backend: &Backend,
        who: &Identity,
    ) -> Result<SegmentHeader, ValidateError> {
        check_counts(ring.slot_count, ring.subscriber_capacity)?;
        let overflow = ValidateError::OutOfBounds(Region::Backend);
        let index_len = index_len_for(ring.slot_count);
        let control_offset = size_of::<SegmentHeader>() as u64;
        let slots_offset = control_offset + CONTROL_LEN;
        let index_offset = slots_offset + u64::from(ring.slot_count) * SLOT_LEN;
        let subscribers_offset =
            align_up(index_offset + u64::from(index_len) * 8, CACHE_LINE).ok_or(overflow)?;
        let extradata_offset = match extradata_len {
            0 => 0,
            _ => subscribers_offset + u64::from(ring.subscriber_capacity) * RECORD_LEN,
        };
        let backend_offset = align_up(
            subscribers_offset
                + u64::from(ring.subscriber_capacity) * RECORD_LEN
                + u64::from(extradata_len),
            PAGE,
        )
        .ok_or(overflow)?;
        let slot_stride = match backend.slot_stride {
            0 => align_up(layout.slot_bytes, PAGE).ok_or(overflow)?,
            s => s,
        };
        let backend_len = match backend.len {
            Some(len) => len,
            None => slot_stride
                .checked_mul(u64::from(ring.slot_count))
                .ok_or(overflow)?,
        };
        let segment_len = align_up(
            backend_offset.checked_add(backend_len).ok_or(overflow)?,
            PAGE,
        )
        .ok_or(overflow)?;
        let header = SegmentHeader {
            magic: MAGIC,
            version_major: VERSION_MAJOR,
            version_minor: VERSION_MINOR,
            header_len: size_of::<SegmentHeader>() as u32,
            segment_len,
            epoch: who.epoch,
            publisher_pid: who.pid,
            memory_kind: backend.memory as u32,
            publisher_start_time: who.start_time,
            created_unix_ns: who.created_unix_ns,
            slot_count: ring.slot_count,
            subscriber_capacity: ring.subscriber_capacity,
            index_len,
            lossless_policy: ring.policy as u32,
            block_timeout_ns: ring.block_timeout_ns,
            control_offset,
            slots_offset,
            index_offset,
            subscribers_offset,
            backend_offset,
            backend_len,
            slot_stride,
            device_uuid: backend.device_uuid,
            device_ordinal: backend.device_ordinal,
            flags: 0,
            layout: *layout,
            publisher_pid_ns: who.pid_ns,
            content: content as u32,
            codec,
            extradata_offset,
            extradata_len,
            reserved0: 0,
            reserved: [0; 72],
        };
        // The planner and the validator must agree: one definition of "well formed".
        SegmentInfo::check(header, segment_len)?;
        Ok(header)
    }
}

const CONTROL_LEN: u64 = 128;
const SLOT_LEN: u64 = 64;
const RECORD_LEN: u64 = 128;
#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<ControlBlock>() as u64 == CONTROL_LEN);
    assert!(size_of::<SlotHeader>() as u64 == SLOT_LEN);
    assert!(size_of::<SubscriberRecord>() as u64 == RECORD_LEN);
};

fn check_counts(slots: u32, subscribers: u32) -> Result<(), ValidateError> {
    if !(2..=MAX_SLOTS).contains(&slots) {
        return Err(ValidateError::Count("slot_count"));
    }
    if !(1..=MAX_SUBSCRIBERS).contains(&subscribers) {
        return Err(ValidateError::Count("subscriber_capacity"));
    }
    Ok(())
}

/// A header that passed validation, with its enumerations decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The validated header (a private copy: shared memory is not re-read).
    pub header: SegmentHeader,
    /// What the stream carries.
    pub content: Content,
    /// Decoded pixel format (frame streams).
    pub format: Option<PixelFormat>,
    /// Decoded codec (packet streams).
    pub codec: Option<Codec>,
    /// Decoded memory kind.
    pub memory: MemoryKind,
    /// Decoded lossless policy.
    pub policy: LosslessPolicy,
}

impl SegmentInfo {
    /// Validates a whole segment given as bytes: the header is read from the
    /// front and the slice length is the mapped size. Any input returns
    /// `Ok` or a typed error; nothing panics.
    ///
    /// ```
    /// use cuframes_core::{SegmentInfo, ValidateError};
    /// assert_eq!(SegmentInfo::validate(&[0u8; 16]), Err(ValidateError::TooSmall { len: 16 }));
    /// assert_eq!(SegmentInfo::validate(&[0u8; 4096]), Err(ValidateError::BadMagic));
    /// ```
    pub fn validate(bytes: &[u8]) -> Result<Self, ValidateError> {
        let (header, _) =
            SegmentHeader::read_from_prefix(bytes).map_err(|_| ValidateError::TooSmall {
                len: bytes.len() as u64,
            })?;
        Self::check(header, bytes.len() as u64)
    }

    /// Validates a header copied out of a mapping of `mapped_len` bytes.
    pub fn check(header: SegmentHeader, mapped_len: u64) -> Result<Self, ValidateError> {
        let h = &header;
        if (mapped_len as usize) < size_of::<SegmentHeader>() {
            return Err(ValidateError::TooSmall { len: mapped_len });
        }
        if h.magic != MAGIC {
            return Err(ValidateError::BadMagic);
        }
        if h.version_major != VERSION_MAJOR {
            return Err(ValidateError::UnsupportedVersion {
                major: h.version_major,
                minor: h.version_minor,
            });
        }
        if h.header_len as usize != size_of::<SegmentHeader>() {
            return Err(ValidateError::HeaderLen(h.header_len));
        }
        if h.segment_len != mapped_len {
            return Err(ValidateError::SegmentLen {
                recorded: h.segment_len,
                actual: mapped_len,
            });
        }
        check_counts(h.slot_count, h.subscriber_capacity)?;
        if h.index_len < 2 * h.slot_count
            || !h.index_len.is_power_of_two()
            || h.index_len > MAX_INDEX_LEN
        {
            return Err(ValidateError::Count("index_len"));
        }
        let memory = MemoryKind::from_u32(h.memory_kind)
            .ok_or(ValidateError::UnknownValue("memory_kind"))?;
        let policy = LosslessPolicy::from_u32(h.lossless_policy)
            .ok_or(ValidateError::UnknownValue("lossless_policy"))?;
        let content = Content::from_u32(h.content).ok_or(ValidateError::UnknownValue("content"))?;
        let (format, codec) = match content {
            Content::Frames => {
                if h.codec != 0 || h.extradata_len != 0 || h.extradata_offset != 0 {
                    return Err(ValidateError::UnknownValue("codec"));
                }
                (Some(h.layout.validate()?), None)
            }
            Content::Packets => {
                check_packet_layout(&h.layout)?;
                if memory != MemoryKind::Host {
                    return Err(ValidateError::UnknownValue("memory_kind"));
                }
                let codec = Codec::from_u32(h.codec).ok_or(ValidateError::UnknownValue("codec"))?;
                if h.extradata_len > MAX_EXTRADATA {
                    return Err(ValidateError::OutOfBounds(Region::Extradata));
                }
                (None, Some(codec))
            }
        };

        let mut regions = [
            (Region::Header, 0, size_of::<SegmentHeader>() as u64, 8),
            (Region::Control, h.control_offset, CONTROL_LEN, CACHE_LINE),
            (
                Region::Slots,
                h.slots_offset,
                u64::from(h.slot_count) * SLOT_LEN,
                CACHE_LINE,
            ),
            (Region::Index, h.index_offset, u64::from(h.index_len) * 8, 8),
            (
                Region::Subscribers,
                h.subscribers_offset,
                u64::from(h.subscriber_capacity) * RECORD_LEN,
                CACHE_LINE,
            ),
            (Region::Backend, h.backend_offset, h.backend_len, PAGE),
            (
                Region::Extradata,
                h.extradata_offset,
                u64::from(h.extradata_len),
                1,
            ),
        ];
        // Without extradata the region is empty and takes no place.
        let regions = match (h.extradata_len, h.extradata_offset) {
            (0, 0) => &mut regions[..6],
            (0, _) => return Err(ValidateError::OutOfBounds(Region::Extradata)),
            _ => &mut regions[..],
        };
        for &(region, offset, len, align) in regions.iter() {
            let end = offset
                .checked_add(len)
                .ok_or(ValidateError::OutOfBounds(region))?;
            if offset % align != 0 || end > mapped_len {
                return Err(ValidateError::OutOfBounds(region));
            }
        }
        regions.sort_unstable_by_key(|r| r.1);
        for pair in regions.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.1 + a.2 > b.1 {
                return Err(ValidateError::Overlap(a.0, b.0));
            }
        }
        if memory == MemoryKind::Host {
            // Every slot's bytes must lie inside the backend area.
            let needed = h
                .slot_stride
                .checked_mul(u64::from(h.slot_count))
                .ok_or(ValidateError::OutOfBounds(Region::Backend))?;
            if h.slot_stride < h.layout.slot_bytes
                || h.slot_stride % CACHE_LINE != 0
                || needed > h.backend_len
            {
                return Err(ValidateError::OutOfBounds(Region::Backend));
            }
        }
        Ok(SegmentInfo {
            header,
            content,
            format,
            codec,
            memory,
            policy,
        })
    }

    /// Name of what each slot holds: the pixel format of a frame stream,
    /// the codec of a packet stream.
    pub fn format_name(&self) -> &'static str {
        match (self.format, self.codec) {
            (Some(f), _) => f.name(),
            (_, Some(c)) => c.name(),
            _ => "?",
        }
    }

    /// Byte range of the codec configuration inside the segment (empty
    /// when there is none).
    pub fn extradata_range(&self) -> (u64, u64) {
        let h = &self.header;
        (
            h.extradata_offset,
            h.extradata_offset + u64::from(h.extradata_len),
        )
    }

    /// Byte range of slot `i`'s data inside the segment (host memory only).
    pub fn host_slot_range(&self, slot: u32) -> Option<(u64, u64)> {
        if self.memory != MemoryKind::Host || slot >= self.header.slot_count {
            return None;
        }
        let start = self.header.backend_offset + u64::from(slot) * self.header.slot_stride;
        Some((start, start + self.header.layout.slot_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn sample() -> (SegmentHeader, u64) {
        let layout = FrameLayout::new(PixelFormat::Nv12, 320, 240, 64).unwrap();
        let h = SegmentHeader::plan(
            &layout,
            &RingParams::default(),
            &Backend::HOST,
            &Identity::default(),
        )
        .unwrap();
        (h, h.segment_len)
    }

    #[test]
    fn planned_segment_validates() {
        let (h, len) = sample();
        let info = SegmentInfo::check(h, len).unwrap();
        assert_eq!(info.format, Some(PixelFormat::Nv12));
        assert_eq!(info.header.backend_offset % PAGE, 0);
        let (s, e) = info.host_slot_range(7).unwrap();
        assert!(e <= len && s >= info.header.backend_offset);
        assert_eq!(info.host_slot_range(8), None);
    }

    #[test]
    fn each_corruption_has_its_error() {
        let (h, len) = sample();
        type Corruption = (fn(&mut SegmentHeader), ValidateError);
        let cases: [Corruption; 9] = [
            (|h| h.magic[0] = b'X', ValidateError::BadMagic),
            (
                |h| h.version_major = 1,
                ValidateError::UnsupportedVersion { major: 1, minor: 0 },
            ),
            (|h| h.header_len = 1, ValidateError::HeaderLen(1)),
            (|h| h.slot_count = 0, ValidateError::Count("slot_count")),
            (
                |h| h.subscriber_capacity = 64,
                ValidateError::Count("subscriber_capacity"),
            ),
            (
                |h| h.memory_kind = 9,
                ValidateError::UnknownValue("memory_kind"),
            ),
            (
                |h| h.index_offset = h.slots_offset,
                ValidateError::Overlap(Region::Slots, Region::Index),
            ),
            (
                |h| h.control_offset = u64::MAX - 3,
                ValidateError::OutOfBounds(Region::Control),
            ),
            (
                |h| h.slot_stride = 64,
                ValidateError::OutOfBounds(Region::Backend),
            ),
        ];
        for (corrupt, want) in cases {
            let mut bad = h;
            corrupt(&mut bad);
            assert_eq!(SegmentInfo::check(bad, len), Err(want));
        }
        assert!(matches!(
            SegmentInfo::check(h, len - 1),
            Err(ValidateError::SegmentLen { .. })
        ));
    }

    #[test]
    fn validate_reads_from_bytes() {
        let (h, len) = sample();
        let mut bytes = [0u8; 4096];
        bytes[..384].copy_from_slice(h.as_bytes());
        assert!(
            matches!(SegmentInfo::validate(&bytes), Err(ValidateError::SegmentLen { recorded, .. }) if recorded == len)
        );
    }
}
