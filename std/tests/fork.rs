//! A child forked without exec (Python multiprocessing's fork start method,
//! a daemon that forks) shares its parent's records, locks and frames:
//! dropping its copies of a publisher, subscriber or frame gives nothing
//! back and closes nothing.

use cuframes::*;
use std::time::Duration;

#[test]
fn a_forked_child_dropping_its_copies_leaves_the_parent_alone() {
    std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
    let key = format!("fork-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 16, 64).unwrap();
    let opts = PublisherOptions {
        slot_count: 4,
        heartbeat: Duration::from_millis(10),
        ..Default::default()
    };
    let mut publisher = Publisher::create(&key, layout, opts).unwrap();
    let mut sub =
        Subscriber::connect(&key, "parent", Mode::NewestOnly, Default::default()).unwrap();
    let mut slot = vec![0u8; layout.packed_bytes() as usize];
    testsrc::fill(&layout, &mut slot, 1);
    publisher.publish_from(&slot, 0).unwrap();
    let frame = sub.next_frame(Duration::from_secs(1)).unwrap();
    let index = sub.record_index();
    // SAFETY: the child only drops values (no locks are taken on the drop
    // paths it runs) and leaves with _exit, running no atexit handlers.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        drop(frame);
        drop(sub);
        drop(publisher);
        // SAFETY: ends the child at once, as after fork it must.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    let s = stream_status(&key).unwrap();
    assert_eq!(
        s.stats.state,
        core::state::OPEN,
        "the child closed the stream"
    );
    assert!(s.record_alive(index), "the child dropped the parent's lock");
    let me = s.stats.active().find(|r| r.index == index);
    assert_eq!(
        me.map(|r| r.held),
        Some(1),
        "the child freed the parent's record"
    );
    // Every free slot is rewritten many times: the held one must not be.
    for seq in 2..40 {
        testsrc::fill(&layout, &mut slot, seq);
        publisher.publish_from(&slot, 0).unwrap();
    }
    assert_eq!(testsrc::verify(&layout, frame.data(), 1), Ok(()));
    drop(frame);
    assert!(sub.next_frame(Duration::from_secs(1)).is_ok());
}
