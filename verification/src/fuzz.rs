//! Bodies of the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`), and seed
//! inputs for them.
//!
//! Each body takes arbitrary bytes, runs the code under test and asserts the
//! properties validation promises. A panic is a finding: either validation
//! let through something inconsistent, or a public function panicked on
//! hostile bytes.

use cuframes_core::{
    packet, Backend, Codec, Content, FrameLayout, Identity, LosslessPolicy, MemoryKind,
    PacketParams, PixelFormat, Region, RingParams, SegmentHeader, SegmentInfo, CACHE_LINE,
    MAX_PLANES, PAGE,
};
use zerocopy::{FromBytes, IntoBytes};

/// `validate` target: the bytes are a whole mapped segment.
///
/// On `Ok`, independently re-checks what validation promises: the regions
/// are in bounds, aligned and disjoint, the frame layout is valid, and every
/// host slot (and every plane inside it) lies inside the backend area.
pub fn validate(data: &[u8]) {
    let Ok(info) = SegmentInfo::validate(data) else {
        return;
    };
    let h = &info.header;
    let len = data.len() as u64;
    assert_eq!(h.segment_len, len);
    assert_eq!(SegmentInfo::check(*h, len), Ok(info), "validation is pure");

    match info.content {
        Content::Frames => {
            let format = h
                .layout
                .validate()
                .expect("a valid segment has a valid layout");
            assert_eq!(Some(format), info.format);
            assert_eq!((info.codec, h.extradata_len), (None, 0));
            check_valid_layout(&h.layout);
        }
        Content::Packets => {
            assert_eq!(info.format, None);
            assert_eq!(info.codec.map(|c| c as u32), Some(h.codec));
            assert_eq!(info.memory, MemoryKind::Host);
            assert_eq!((h.layout.format, h.layout.plane_count), (0, 0));
            assert!((1..=packet::MAX_PACKET_BYTES).contains(&h.layout.slot_bytes));
            assert!(h.extradata_len <= packet::MAX_EXTRADATA);
        }
    }

    let regions = [
        (Region::Header, 0, 384, 8),
        (Region::Control, h.control_offset, 128, CACHE_LINE),
        (
            Region::Slots,
            h.slots_offset,
            u64::from(h.slot_count) * 64,
            CACHE_LINE,
        ),
        (Region::Index, h.index_offset, u64::from(h.index_len) * 8, 8),
        (
            Region::Subscribers,
            h.subscribers_offset,
            u64::from(h.subscriber_capacity) * 128,
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
    let (start, end) = info.extradata_range();
    assert_eq!(end - start, u64::from(h.extradata_len));
    for (i, &(region, off, n, align)) in regions.iter().enumerate() {
        let end = off.checked_add(n).expect("region end fits");
        assert!(end <= len, "{region:?} out of bounds");
        assert_eq!(off % align, 0, "{region:?} misaligned");
        for &(other, o_off, o_n, _) in &regions[i + 1..] {
            let disjoint = end <= o_off || o_off + o_n <= off;
            // Empty regions (a zero-length backend) overlap nothing.
            assert!(
                disjoint || n == 0 || o_n == 0,
                "{region:?} overlaps {other:?}"
            );
        }
    }
    assert!(h.index_len.is_power_of_two() && h.index_len >= 2 * h.slot_count);

    let backend_end = h.backend_offset + h.backend_len;
    let mut prev_end = h.backend_offset;
    for slot in 0..=h.slot_count + 1 {
        match info.host_slot_range(slot) {
            Some((start, end)) => {
                assert_eq!(info.memory, MemoryKind::Host);
                assert!(slot < h.slot_count);
                assert!(prev_end <= start && start <= end && end <= backend_end);
                assert_eq!(end - start, h.layout.slot_bytes);
                for p in 0..h.layout.plane_count as usize {
                    let (ps, pe) = h.layout.plane_range(p).expect("plane in use");
                    assert!(start + ps <= start + pe && start + pe <= end);
                }
                prev_end = end;
            }
            None => assert!(info.memory != MemoryKind::Host || slot >= h.slot_count),
        }
    }
}

/// `layout` target: the bytes are a [`FrameLayout`] (120 bytes, the rest
/// ignored). Every accessor must be total; a layout that validates must be
/// consistent with its format.
pub fn layout(data: &[u8]) {
    let Ok((l, _)) = FrameLayout::read_from_prefix(data) else {
        return;
    };
    // Total on anything, validated or not.
    for i in 0..=MAX_PLANES {
        let _ = l.plane_range(i);
    }
    let _ = l.packed_bytes();
    let _ = l.pixel_format();
    assert!(l.planes().len() <= MAX_PLANES);
    if l.validate().is_ok() {
        check_valid_layout(&l);
    }
}

fn check_valid_layout(l: &FrameLayout) {
    let f = l.validate().expect("checked by caller");
    assert_eq!(l.pixel_format(), Some(f));
    let n = f.plane_count();
    assert_eq!(l.planes().len(), n);
    let mut prev_end = 0;
    for i in 0..n {
        let p = l.planes[i];
        let (start, end) = l.plane_range(i).expect("plane in use has a range");
        assert!(prev_end <= start && start <= end && end <= l.slot_bytes);
        prev_end = end;
        let (row_bytes, rows, _) = f.plane_shape(i, l.width, l.height).expect("shape");
        assert_eq!((p.row_bytes, p.rows), (row_bytes, rows));
        assert!(p.pitch >= p.row_bytes);
    }
    assert_eq!(l.plane_range(n), None);
    assert!(l.packed_bytes() <= l.slot_bytes);
    // The planner lays out the same geometry and agrees it is valid.
    let planned = FrameLayout::new(f, l.width, l.height, 1).expect("same geometry plans");
    assert_eq!(planned.validate(), Ok(f));
    assert!(planned.slot_bytes <= l.slot_bytes);
}

/// Valid segments (header followed by zeros) covering every memory kind,
/// pixel format and both policies: seeds for the `validate` target and the
/// base of the smoke test's mutations.
pub fn segment_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let kinds = [
        // Host with a tight custom stride keeps the segment small (8-12 KiB).
        (MemoryKind::Host, None, 1024),
        (MemoryKind::Host, None, 0),
        (MemoryKind::CudaIpc, Some(0), 0),
        (MemoryKind::CudaVmmFd, Some(64), 0),
    ];
    for (n, format) in PixelFormat::ALL.into_iter().enumerate() {
        let layout = FrameLayout::new(format, 16, 8, 64).expect("small layout");
        let (memory, len, slot_stride) = kinds[n % kinds.len()];
        let ring = RingParams {
            slot_count: 2 + n as u32,
            subscriber_capacity: 1 + n as u32,
            policy: if n % 2 == 0 {
                LosslessPolicy::Block
            } else {
                LosslessPolicy::DropOldest
            },
            block_timeout_ns: 1_000_000,
        };
        let backend = Backend {
            memory,
            len,
            slot_stride,
            device_uuid: [n as u8; 16],
            device_ordinal: 0,
        };
        let who = Identity {
            epoch: 0x1234_5678 + n as u64,
            pid: 100 + n as u32,
            start_time: 5,
            created_unix_ns: 1,
            pid_ns: 0,
        };
        let h = SegmentHeader::plan(&layout, &ring, &backend, &who).expect("seed plans");
        out.push(seed_bytes(&h));
    }
    // Packet streams: every codec, with and without codec configuration.
    for (n, codec) in Codec::ALL.into_iter().enumerate() {
        let params = PacketParams {
            codec,
            max_packet: 512 + 64 * n as u64,
            extradata_len: (n as u32 % 3) * 24,
            width: 16 * n as u32,
            height: 0,
        };
        let ring = RingParams {
            slot_count: 2 + n as u32,
            subscriber_capacity: 1 + n as u32,
            ..RingParams::default()
        };
        let h = SegmentHeader::plan_packets(&params, &ring, &Identity::default())
            .expect("packet seed plans");
        out.push(seed_bytes(&h));
    }
    out
}

/// A planned header followed by zeros, as a fresh segment looks.
fn seed_bytes(h: &SegmentHeader) -> Vec<u8> {
    let mut bytes = vec![0u8; h.segment_len as usize];
    bytes[..384].copy_from_slice(h.as_bytes());
    bytes
}

/// Valid frame layouts of every format: seeds for the `layout` target.
pub fn layout_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for format in PixelFormat::ALL {
        for (w, h, align) in [(2, 2, 1), (640, 480, 64), (1920, 1080, 512)] {
            let l = FrameLayout::new(format, w, h, align).expect("seed layout");
            out.push(l.as_bytes().to_vec());
        }
    }
    out
}
