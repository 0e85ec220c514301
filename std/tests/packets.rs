//! Packet streams through real shared memory: what each reader mode hands
//! out around keyframes, the publisher's errors, and hostile bytes in a
//! live segment (typed errors, nothing lost, no panic).

use cuframes::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod common;
use common::ShmDir;

fn dir() -> &'static ShmDir {
    static DIR: std::sync::OnceLock<ShmDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| ShmDir::new("packets"))
}

const T: Duration = Duration::from_millis(500);

fn stream(slots: u32, policy: LosslessPolicy, key: &str) -> PacketPublisher {
    dir();
    let options = PublisherOptions {
        slot_count: slots,
        policy,
        // Lossless means lossless here: a full ring is a Timeout, soon.
        block_timeout: Duration::from_millis(5),
        evict_lagging: false,
        ..Default::default()
    };
    let s = PacketStream::new(Codec::H264, 4096)
        .with_extradata(b"\0\0\0\x01\x67sps\0\0\0\x01\x68pps".to_vec());
    PacketPublisher::create(key, &s, options).unwrap()
}

/// Publishes packet `seq` (1-based, as the ring will number it): its bytes
/// say which it is, keyframes every `gop`.
fn put(p: &mut PacketPublisher, seq: u64, gop: u64) {
    let key = (seq - 1) % gop == 0;
    let data = payload(seq);
    let meta = PacketMeta {
        pts_ns: seq as i64 * 40_000_000,
        dts_ns: seq as i64 * 40_000_000 - 80_000_000,
        duration_ns: 40_000_000,
        flags: if key { packet::KEY } else { 0 },
        ..Default::default()
    };
    assert_eq!(p.publish(&data, &meta).unwrap(), seq);
}

fn payload(seq: u64) -> Vec<u8> {
    let n = 100 + (seq as usize * 37) % 3000;
    (0..n).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn check(pkt: &Packet, gop: u64) {
    assert_eq!(
        pkt.data(),
        payload(pkt.seq()).as_slice(),
        "packet {}",
        pkt.seq()
    );
    assert_eq!(pkt.is_key(), (pkt.seq() - 1) % gop == 0);
    assert_eq!(pkt.pts_ns(), pkt.seq() as i64 * 40_000_000);
    assert_eq!(pkt.dts_ns(), pkt.pts_ns() - 80_000_000);
    assert_eq!(pkt.duration_ns(), 40_000_000);
}

#[test]
fn every_field_and_the_codec_configuration_arrive() {
    let mut p = stream(8, LosslessPolicy::Block, "pk-fields");
    let mut sub =
        PacketSubscriber::connect("pk-fields", "s", Mode::Queue, Default::default()).unwrap();
    assert_eq!(sub.codec(), Codec::H264);
    assert_eq!(sub.extradata(), p.extradata());
    assert_eq!(sub.max_packet(), 4096);
    for seq in 1..=20 {
        put(&mut p, seq, 5);
        let pkt = sub.next_packet(T).unwrap();
        assert_eq!(pkt.seq(), seq);
        check(&pkt, 5);
    }
    let stats = p.stats();
    assert_eq!((stats.gop, stats.last_key_seq), (5, 16));
    assert_eq!(
        stats.bytes,
        (1..=20).map(|s| payload(s).len() as u64).sum::<u64>()
    );
}

/// NEWEST_ONLY joins at the newest keyframe, reads on in order, and jumps
/// to the next keyframe once a newer group of pictures began while it was
/// behind; what it skipped is counted.
#[test]
fn newest_joins_and_jumps_at_keyframes() {
    let mut p = stream(16, LosslessPolicy::DropOldest, "pk-newest");
    for seq in 1..=7 {
        put(&mut p, seq, 5); // keys at 1 and 6
    }
    let mut sub =
        PacketSubscriber::connect("pk-newest", "s", Mode::NewestOnly, Default::default()).unwrap();
    let got: Vec<u64> = (0..2).map(|_| sub.next_packet(T).unwrap().seq()).collect();
    assert_eq!(got, [6, 7]);
    assert!(sub.try_next().unwrap().is_none());
    for seq in 8..=13 {
        put(&mut p, seq, 5); // key at 11
    }
    // Behind at 8 while 11 began a new GOP: jump there.
    let pkt = sub.next_packet(T).unwrap();
    assert_eq!((pkt.seq(), pkt.is_key()), (11, true));
    check(&pkt, 5);
    drop(pkt);
    assert_eq!(sub.next_packet(T).unwrap().seq(), 12);
    assert_eq!(sub.stats().dropped, 3);
}

/// A ring shorter than the GOP: the newest keyframe is overwritten before a
/// late reader comes, so it waits for the next one rather than start
/// mid-GOP; the same for QUEUE.
#[test]
fn late_reader_waits_for_the_next_keyframe() {
    let mut p = stream(4, LosslessPolicy::DropOldest, "pk-wait");
    for seq in 1..=8 {
        put(&mut p, seq, 10);
    }
    let mut newest =
        PacketSubscriber::connect("pk-wait", "n", Mode::NewestOnly, Default::default()).unwrap();
    let mut queue =
        PacketSubscriber::connect("pk-wait", "q", Mode::Queue, Default::default()).unwrap();
    assert!(newest.try_next().unwrap().is_none());
    assert!(queue.try_next().unwrap().is_none());
    put(&mut p, 9, 10);
    put(&mut p, 10, 10);
    assert!(newest.try_next().unwrap().is_none());
    assert!(queue.try_next().unwrap().is_none());
    put(&mut p, 11, 10); // the next keyframe
    for sub in [&mut newest, &mut queue] {
        let pkt = sub.next_packet(T).unwrap();
        assert_eq!((pkt.seq(), pkt.is_key()), (11, true));
    }
}

/// QUEUE is lossless from its join keyframe under Block; under DropOldest a
/// reader whose next packet was overwritten resumes at the next keyframe in
/// the ring, never mid-GOP, and counts what it lost.
#[test]
fn queue_block_lossless_and_drop_oldest_skips_to_a_keyframe() {
    let mut p = stream(8, LosslessPolicy::Block, "pk-block");
    put(&mut p, 1, 4);
    let mut sub =
        PacketSubscriber::connect("pk-block", "q", Mode::Queue, Default::default()).unwrap();
    let mut next = 2;
    let mut seen = Vec::new();
    for _ in 0..200 {
        // Publish as far as the ring allows, then read one.
        while next <= 100 {
            let data = payload(next);
            let meta = PacketMeta {
                pts_ns: next as i64 * 40_000_000,
                dts_ns: next as i64 * 40_000_000 - 80_000_000,
                duration_ns: 40_000_000,
                flags: if (next - 1) % 4 == 0 { packet::KEY } else { 0 },
                ..Default::default()
            };
            match p.publish(&data, &meta) {
                Ok(_) => next += 1,
                Err(e) if e.code() == ErrorCode::Timeout => break,
                Err(e) => panic!("{e}"),
            }
        }
        if let Some(pkt) = sub.try_next().unwrap_or_else(|e| panic!("{e}")) {
            check(&pkt, 4);
            seen.push(pkt.seq());
        }
        if seen.len() == 100 {
            break;
        }
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());

    let mut p = stream(8, LosslessPolicy::DropOldest, "pk-drop");
    put(&mut p, 1, 4);
    let mut sub =
        PacketSubscriber::connect("pk-drop", "q", Mode::Queue, Default::default()).unwrap();
    assert_eq!(sub.next_packet(T).unwrap().seq(), 1);
    for seq in 2..=11 {
        put(&mut p, seq, 4); // keys 5, 9; 2 and 3 are overwritten
    }
    let pkt = sub.next_packet(T).unwrap();
    assert_eq!((pkt.seq(), pkt.is_key()), (5, true));
    check(&pkt, 4);
    drop(pkt);
    assert_eq!(sub.next_packet(T).unwrap().seq(), 6);
    assert_eq!(sub.stats().dropped, 3);
}

#[test]
fn publisher_errors_lose_nothing() {
    let mut p = stream(4, LosslessPolicy::Block, "pk-errors");
    let mut sub =
        PacketSubscriber::connect("pk-errors", "q", Mode::Queue, Default::default()).unwrap();
    let e = p.publish(&[0; 4097], &PacketMeta::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(
        e.to_string().contains("4097") && e.to_string().contains("4096"),
        "{e}"
    );
    // Nothing was published; the next packet is seq 1 and arrives whole.
    put(&mut p, 1, 1);
    check(&sub.next_packet(T).unwrap(), 1);
    // Writing in place: a too-long commit is refused and nothing is lost.
    let mut lease = p.loan().unwrap();
    lease.data_mut()[..3].copy_from_slice(b"abc");
    let too_long = PacketMeta {
        len: 5000,
        ..Default::default()
    };
    assert_eq!(
        lease.commit(&too_long).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let mut lease = p.loan().unwrap();
    lease.data_mut()[..3].copy_from_slice(b"abc");
    let meta = PacketMeta {
        len: 3,
        flags: packet::KEY,
        ..Default::default()
    };
    assert_eq!(lease.commit(&meta).unwrap(), 2);
    assert_eq!(sub.next_packet(T).unwrap().data(), b"abc");
    // A dropped lease publishes nothing.
    drop(p.loan().unwrap());
    assert!(sub.try_next().unwrap().is_none());
    // Frame API on a packet stream: refused, clearly.
    let e = Subscriber::connect("pk-errors", "f", Mode::Queue, Default::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Incompatible);
    // A stream that cannot be planned (no room for any packet) is refused
    // before the key is locked: no lock file is left behind.
    let e = PacketPublisher::create(
        "pk-zero",
        &PacketStream::new(Codec::H264, 0),
        Default::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(!dir().0.join(".cuframes.pk-zero.lock").exists());
    // Codec configuration over 1 MiB: refused before anything is created.
    let big = PacketStream::new(Codec::Hevc, 1024).with_extradata(vec![0; (1 << 20) + 1]);
    let e = PacketPublisher::create("pk-big", &big, Default::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
}

/// Hostile bytes in a live packet segment: a slot header claiming a packet
/// longer than the slot is a typed `Corrupt` for the reader, which holds
/// nothing afterwards; a header with an unknown codec or content is refused
/// at connect with `Corrupt`.
#[test]
fn hostile_packet_headers_are_typed_errors() {
    let mut p = stream(4, LosslessPolicy::DropOldest, "pk-hostile");
    let mut sub =
        PacketSubscriber::connect("pk-hostile", "q", Mode::Queue, Default::default()).unwrap();
    put(&mut p, 1, 1);
    let info = *p.segment_info();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir().0.join("cuframes.pk-hostile"))
        .unwrap();
    // Find the slot holding seq 1 and claim a 1 GiB packet in it.
    let slots_at = info.header.slots_offset;
    let mut hit = false;
    for i in 0..info.header.slot_count as u64 {
        let mut seq = [0u8; 8];
        file.read_exact_at(&mut seq, slots_at + i * 64 + 8).unwrap();
        if u64::from_ne_bytes(seq) == 1 {
            file.write_all_at(&(1u64 << 30).to_ne_bytes(), slots_at + i * 64 + 56)
                .unwrap();
            hit = true;
        }
    }
    assert!(hit);
    let e = sub.next_packet(T).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt);
    let held: u32 = sub.ring_stats().active().map(|r| r.held).sum();
    assert_eq!(held, 0, "the hold was given back");
    // The stream goes on for packets that are sound.
    put(&mut p, 2, 1);
    assert_eq!(sub.next_packet(T).unwrap().seq(), 2);

    // Unknown codec, then unknown content, in the write-once header.
    for (offset, value) in [(292u64, 99u32), (288, 7)] {
        let mut original = [0u8; 4];
        file.read_exact_at(&mut original, offset).unwrap();
        file.write_all_at(&value.to_ne_bytes(), offset).unwrap();
        let e = PacketSubscriber::connect("pk-hostile", "late", Mode::Queue, Default::default())
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");
        file.write_all_at(&original, offset).unwrap();
    }
    PacketSubscriber::connect("pk-hostile", "late", Mode::Queue, Default::default()).unwrap();
}
