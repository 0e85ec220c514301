//! A segment file truncated under live processes kills none of them: the
//! SIGBUS guard swaps the vanished pages for zero pages, and the handles
//! read zeros (and report the segment corrupt) instead of dying.

use cuframes::*;
use std::time::Duration;

mod common;
use common::ShmDir;

#[test]
fn truncated_segment_does_not_kill_publisher_or_subscriber() {
    let dir = ShmDir::new("guard");
    let key = "guard-truncate";
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 48, 64).unwrap();
    let options = PublisherOptions {
        block_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let mut publisher = Publisher::create(key, layout, options).unwrap();
    let mut sub = Subscriber::connect(key, "reader", Mode::Queue, Default::default()).unwrap();
    let mut lease = publisher.loan().unwrap();
    lease.plane_mut(0).fill(0x5A);
    lease.commit(0).unwrap();
    let frame = sub.next_frame(Duration::from_secs(1)).unwrap();
    assert!(frame.plane(0).iter().all(|&b| b == 0x5A));

    // Someone truncates the segment while both handles map it.
    std::fs::File::options()
        .write(true)
        .open(dir.0.join(format!("cuframes.{key}")))
        .unwrap()
        .set_len(0)
        .unwrap();

    // Reading the held frame would have raised SIGBUS: it reads zeros.
    assert!(frame.plane(0).iter().all(|&b| b == 0));
    drop(frame);
    // The zeroed ring yields no frame, only an error (which one depends on
    // which check notices first); nothing panics.
    let next = sub.next_frame(Duration::from_millis(200));
    assert!(next.is_err(), "a frame from a truncated segment");
    // A newcomer refuses the truncated file.
    let options = SubscriberOptions {
        connect_timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let late = Subscriber::connect(key, "late", Mode::Queue, options);
    assert_eq!(late.unwrap_err().code(), ErrorCode::Corrupt);
    // Writing through the publisher's mapping survives too.
    if let Ok(mut lease) = publisher.loan() {
        lease.plane_mut(0).fill(1);
        let _ = lease.commit(1);
    }
    drop(sub);
    drop(publisher);
}
