//! The byte layout tables of `docs/protocol.md`, as a test: every field's
//! offset and size. A change here is a protocol change (see the versioning
//! rule in the document); update the tables with it.
#![cfg(not(loom))]

use core::mem::{align_of, offset_of, size_of};
use cuframes_core::*;

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! fields {
    ($t:ty, size $size:expr, align $align:expr; $($field:ident @ $off:expr, $len:expr;)*) => {{
        assert_eq!(size_of::<$t>(), $size, "size of {}", stringify!($t));
        assert_eq!(align_of::<$t>(), $align, "alignment of {}", stringify!($t));
        let mut end = 0;
        $(
            assert_eq!(offset_of!($t, $field), $off, "{}::{} offset", stringify!($t), stringify!($field));
            assert_eq!(size_of_field(|x: &$t| &x.$field), $len, "{}::{} size", stringify!($t), stringify!($field));
            assert_eq!($off, end, "{}::{} leaves a gap", stringify!($t), stringify!($field));
            end = $off + $len;
        )*
        assert_eq!(end, $size, "{} fields cover it", stringify!($t));
    }};
}

#[test]
fn segment_header() {
    fields!(SegmentHeader, size 384, align 8;
        magic @ 0, 8;
        version_major @ 8, 2;
        version_minor @ 10, 2;
        header_len @ 12, 4;
        segment_len @ 16, 8;
        epoch @ 24, 8;
        publisher_pid @ 32, 4;
        memory_kind @ 36, 4;
        publisher_start_time @ 40, 8;
        created_unix_ns @ 48, 8;
        slot_count @ 56, 4;
        subscriber_capacity @ 60, 4;
        index_len @ 64, 4;
        lossless_policy @ 68, 4;
        block_timeout_ns @ 72, 8;
        control_offset @ 80, 8;
        slots_offset @ 88, 8;
        index_offset @ 96, 8;
        subscribers_offset @ 104, 8;
        backend_offset @ 112, 8;
        backend_len @ 120, 8;
        slot_stride @ 128, 8;
        device_uuid @ 136, 16;
        device_ordinal @ 152, 4;
        flags @ 156, 4;
        layout @ 160, 120;
        publisher_pid_ns @ 280, 8;
        content @ 288, 4;
        codec @ 292, 4;
        extradata_offset @ 296, 8;
        extradata_len @ 304, 4;
        reserved0 @ 308, 4;
        reserved @ 312, 72;
    );
}

#[test]
fn frame_layout() {
    fields!(FrameLayout, size 120, align 8;
        format @ 0, 4;
        width @ 4, 4;
        height @ 8, 4;
        plane_count @ 12, 4;
        planes @ 16, 96;
        slot_bytes @ 112, 8;
    );
    fields!(PlaneLayout, size 24, align 8;
        offset @ 0, 8;
        pitch @ 8, 4;
        rows @ 12, 4;
        row_bytes @ 16, 4;
        reserved @ 20, 4;
    );
}

#[test]
fn control_block() {
    fields!(ControlBlock, size 128, align 64;
        head @ 0, 8;
        notify @ 8, 4;
        waiters @ 12, 4;
        state @ 16, 4;
        reserved0 @ 20, 4;
        heartbeat_ns @ 24, 8;
        published @ 32, 8;
        last_commit_ns @ 40, 8;
        rate_mfps @ 48, 8;
        bytes @ 56, 8;
        space @ 64, 4;
        space_waiters @ 68, 4;
        last_key @ 72, 8;
        gop @ 80, 8;
        bitrate_bps @ 88, 8;
        reserved2 @ 96, 32;
    );
}

#[test]
fn slot_header() {
    fields!(SlotHeader, size 64, align 64;
        lease @ 0, 8;
        seq @ 8, 8;
        pts_ns @ 16, 8;
        commit_ns @ 24, 8;
        flags @ 32, 8;
        dts_ns @ 40, 8;
        duration_ns @ 48, 8;
        len @ 56, 8;
    );
}

#[test]
fn subscriber_record() {
    fields!(SubscriberRecord, size 128, align 64;
        state @ 0, 8;
        mode @ 8, 4;
        max_held @ 12, 4;
        pid @ 16, 4;
        held @ 20, 4;
        start_time @ 24, 8;
        heartbeat_ns @ 32, 8;
        cursor @ 40, 8;
        last_seq @ 48, 8;
        received @ 56, 8;
        dropped @ 64, 8;
        name @ 72, 32;
        pid_ns @ 104, 8;
        evictions @ 112, 8;
        waiting @ 120, 4;
        reserved @ 124, 4;
    );
    assert_eq!(size_of::<IndexEntry>(), 8);
}

#[test]
fn packed_words_and_constants() {
    assert_eq!(pack(5, 3), 5 << 8 | 3);
    assert_eq!(unpack(pack(MAX_SEQ, 63)), (MAX_SEQ, 63));
    assert_eq!(record::word(7, record::ACTIVE), 7 << 8 | 2);
    assert_eq!(record::MAX_GENERATION, (1 << 56) - 1);
    assert_eq!((NO_CURSOR, EVICTED), (u64::MAX, 1 << 62));
    assert_eq!(VERSION_MAJOR, 3);
    assert_eq!(
        (
            record::FREE,
            record::CLAIMING,
            record::ACTIVE,
            record::RECLAIMING
        ),
        (0, 1, 2, 3)
    );
    assert_eq!((state::INIT, state::OPEN, state::CLOSED), (0, 1, 2));
    assert_eq!(WRITER, 1 << 63);
    assert_eq!(MAGIC, *b"CUFRAMES");
    assert_eq!((MAX_SLOTS, MAX_SUBSCRIBERS, NAME_LEN), (64, 63, 32));
    assert_eq!((PAGE, CACHE_LINE, NO_CURSOR), (4096, 64, u64::MAX));
    assert_eq!((Mode::NewestOnly as u32, Mode::Queue as u32), (1, 2));
    assert_eq!(
        (
            LosslessPolicy::Block as u32,
            LosslessPolicy::DropOldest as u32
        ),
        (1, 2)
    );
    assert_eq!(
        (
            MemoryKind::Host as u32,
            MemoryKind::CudaIpc as u32,
            MemoryKind::CudaVmmFd as u32
        ),
        (1, 2, 3)
    );
    let formats: Vec<(u32, &str)> = PixelFormat::ALL
        .iter()
        .map(|f| (*f as u32, f.name()))
        .collect();
    assert_eq!(
        formats,
        [
            (1, "nv12"),
            (2, "p010"),
            (3, "gray8"),
            (4, "rgb24"),
            (5, "rgba8"),
            (6, "bgr24")
        ]
    );
    assert_eq!(index_len_for(8), 16);
    assert_eq!(index_len_for(5), 16);
}

#[test]
fn error_codes() {
    let codes: Vec<(i32, &str)> = ErrorCode::ALL
        .iter()
        .map(|c| (*c as i32, c.name()))
        .collect();
    assert_eq!(
        codes,
        [
            (1, "Timeout"),
            (2, "NotFound"),
            (3, "Closed"),
            (4, "PublisherGone"),
            (5, "InvalidArgument"),
            (6, "Incompatible"),
            (7, "Capacity"),
            (8, "Permission"),
            (9, "Cuda"),
            (10, "Io"),
            (11, "Corrupt"),
            (12, "Released"),
            (13, "WouldBlock"),
            (14, "Internal"),
            (15, "AlreadyExists"),
            (16, "Lagged"),
        ]
    );
}
