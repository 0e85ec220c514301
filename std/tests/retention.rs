//! A retained slot: its bytes outlive newer frames, a loan that needs the
//! slot waits for the retention and wakes as soon as another thread drops
//! it, and a waiting loan gives up when told to stop.

mod common;

use cuframes::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

static DIR: LazyLock<common::ShmDir> = LazyLock::new(|| common::ShmDir::new("retention"));

fn publisher(key: &str, block_timeout: Duration) -> Publisher {
    LazyLock::force(&DIR);
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 4, 64).unwrap();
    let options = PublisherOptions {
        slot_count: 3,
        block_timeout,
        ..Default::default()
    };
    Publisher::create(key, layout, options).unwrap()
}

/// Holds one slot through a subscriber, retains another: with the head,
/// every slot of three is taken.
fn fill(p: &mut Publisher, key: &str) -> (Subscriber, Frame, Retention, usize) {
    let mut s = Subscriber::connect(key, "holder", Mode::NewestOnly, Default::default()).unwrap();
    p.publish_from(&[1; 256], 0).unwrap();
    let held = s.next_frame(Duration::from_secs(1)).unwrap();
    let lease = p.loan_detached().unwrap();
    // SAFETY: the detached loan covers `len` bytes until the commit below.
    unsafe { lease.data.write_bytes(2, lease.len) };
    p.commit_detached(0).unwrap();
    let kept = p.retain_newest().unwrap();
    p.publish_from(&[3; 256], 0).unwrap();
    (s, held, kept, lease.data as usize)
}

#[test]
fn retained_bytes_survive_and_a_waiting_loan_wakes_when_released() {
    let key = "retention-wake";
    let mut p = publisher(key, Duration::from_secs(30));
    let (_s, _held, kept, at) = fill(&mut p, key);
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        r.store(true, Ordering::SeqCst);
        drop(kept);
    });
    let start = Instant::now();
    let lease = p.loan_detached().unwrap();
    let waited = start.elapsed();
    assert!(
        released.load(Ordering::SeqCst),
        "the loan waited for the release"
    );
    assert!(
        waited < Duration::from_secs(5),
        "woken by the release, not the 30 s timeout: {waited:?}"
    );
    assert_eq!(
        lease.data as usize, at,
        "the retained slot is the one freed"
    );
    // SAFETY: the slot is the loan's; reading its first byte.
    assert_eq!(unsafe { *lease.data }, 2, "untouched while retained");
    t.join().unwrap();
}

#[test]
fn a_loan_behind_a_retention_times_out_or_stops() {
    let key = "retention-timeout";
    let mut p = publisher(key, Duration::from_millis(300));
    let (_s, _held, _kept, _) = fill(&mut p, key);
    let e = p.loan_detached().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout);
    let key = "retention-stop";
    let mut p = publisher(key, Duration::from_secs(30));
    let (_s, _held, _kept, _) = fill(&mut p, key);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, Ordering::SeqCst);
    });
    let start = Instant::now();
    let e = p
        .loan_detached_unless(|| stop.load(Ordering::SeqCst))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::WouldBlock);
    assert!(start.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
}
