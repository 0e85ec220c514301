//! Subscribers map frame bytes read-only: one that writes into its frame
//! dies of SIGSEGV in its own process and changes nothing any other
//! subscriber reads.

use cuframes::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

#[test]
fn a_subscriber_cannot_change_what_another_reads() {
    std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    let key = format!("readonly-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 16, 64).unwrap();
    let mut publisher = Publisher::create(&key, layout, Default::default()).unwrap();
    let mut reader = Subscriber::connect(&key, "reader", Mode::Queue, Default::default()).unwrap();
    let mut packed = vec![0u8; layout.packed_bytes() as usize];
    testsrc::fill(&layout, &mut packed, 1);
    publisher.publish_from(&packed, 0).unwrap();
    let frame = reader.next_frame(Duration::from_secs(1)).unwrap();

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "scribble_on_frame", "--nocapture", "--ignored"])
        .env("CUFRAMES_SCRIBBLE_KEY", &key)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "the write faulted: {status:?}"
    );
    assert_eq!(testsrc::verify(&layout, frame.data(), 1), Ok(()));
    assert!(frame.data().iter().any(|&b| b != 0xEE));
    drop(frame);
    // The scribbler died; its record is swept and the stream goes on.
    testsrc::fill(&layout, &mut packed, 2);
    publisher.publish_from(&packed, 0).unwrap();
    let next = reader.next_frame(Duration::from_secs(1)).unwrap();
    assert_eq!(testsrc::verify(&layout, next.data(), 2), Ok(()));
}

/// The child of `a_subscriber_cannot_change_what_another_reads`: tries to
/// overwrite the frame it holds. Does nothing unless started by that test.
#[test]
#[ignore = "run by another test as a child process"]
fn scribble_on_frame() {
    let Ok(key) = std::env::var("CUFRAMES_SCRIBBLE_KEY") else {
        return;
    };
    let mut sub =
        Subscriber::connect(&key, "scribbler", Mode::NewestOnly, Default::default()).unwrap();
    let frame = sub.next_frame(Duration::from_secs(5)).unwrap();
    let len = frame.data().len();
    // SAFETY: deliberately wrong: writes through the read-only frame to show
    // the mapping refuses it (the process is expected to die here).
    unsafe { std::ptr::write_bytes(frame.as_ptr().cast_mut(), 0xEE, len) };
    println!("the write went through");
}
