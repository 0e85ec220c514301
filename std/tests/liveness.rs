//! Liveness across pid namespaces: a holder whose pid cannot be looked up
//! (another container) is judged by its heartbeat, not swept for a pid that
//! means nothing here.

use cuframes::*;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Offsets inside a SubscriberRecord (see docs/protocol.md).
const PID: u64 = 16;
const HEARTBEAT: u64 = 32;
const PID_NS: u64 = 104;

#[test]
fn foreign_namespace_subscriber_lives_by_heartbeat() {
    std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    let key = format!("liveness-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Gray8, 16, 16, 64).unwrap();
    let opts = PublisherOptions {
        heartbeat: Duration::from_millis(20),
        ..Default::default()
    };
    let _p = Publisher::create(&key, layout, opts).unwrap();
    let sub = Subscriber::connect(&key, "far", Mode::Queue, Default::default()).unwrap();
    let info = *sub.segment_info();
    let record = info.header.subscribers_offset + 128 * u64::from(sub.record_index());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_dir().join(format!("cuframes.{key}")))
        .unwrap();
    let put = |off: u64, bytes: &[u8]| file.write_at(bytes, record + off).unwrap();
    // Pretend the holder sits in another pid namespace under a pid that
    // does not exist here, with a fresh heartbeat.
    put(PID, &999_999u32.to_le_bytes());
    put(PID_NS, &(own_pid_ns() ^ 1).to_le_bytes());
    put(HEARTBEAT, &now_ns().to_le_bytes());
    std::thread::sleep(Duration::from_millis(200));
    let active = |k: &str| stream_status(k).unwrap().stats.active().count();
    assert_eq!(
        active(&key),
        1,
        "a fresh heartbeat keeps a foreign-namespace holder"
    );
    // Silent for longer than the timeout: swept.
    put(HEARTBEAT, &1u64.to_le_bytes());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        active(&key),
        0,
        "a silent foreign-namespace holder is reclaimed"
    );
    // Same namespace, dead pid: swept by pid, whatever its heartbeat says.
    let sub2 = Subscriber::connect(&key, "near", Mode::Queue, Default::default()).unwrap();
    let record2 = info.header.subscribers_offset + 128 * u64::from(sub2.record_index());
    file.write_at(&999_999u32.to_le_bytes(), record2 + PID)
        .unwrap();
    file.write_at(&now_ns().to_le_bytes(), record2 + HEARTBEAT)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(active(&key), 0);
    drop((sub, sub2));
}

#[test]
fn heartbeat_rule() {
    let st = process_start_time(std::process::id()).unwrap();
    let me = std::process::id();
    assert!(
        holder_alive(me, st, own_pid_ns(), 0),
        "same namespace: pid decides"
    );
    assert!(
        !holder_alive(me, st + 1, own_pid_ns(), now_ns()),
        "same namespace: start time decides"
    );
    let other = own_pid_ns() ^ 1;
    assert!(
        holder_alive(1 << 30, 0, other, now_ns()),
        "other namespace: fresh heartbeat"
    );
    let old = now_ns() - HEARTBEAT_TIMEOUT.as_nanos() as u64 - 1;
    assert!(
        !holder_alive(me, st, other, old),
        "other namespace: silent heartbeat"
    );
}
