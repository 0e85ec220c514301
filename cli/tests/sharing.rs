//! A stream owned by another user is refused unless the subscriber asks
//! for it (`--allow-other-owner`), the way a group-shared stream is read.

mod common;
use common::*;
use std::os::unix::fs::chown;
use std::time::Duration;

#[test]
fn another_owners_stream_needs_allow_other_owner() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: giving the segment to another user needs root");
        return;
    }
    let key = key("sharing");
    let mut p = publisher(&key, "64x32@200", &["--mode", "660"]);
    // The publisher stays root; its segment now belongs to another user,
    // as a group-shared segment of another account would.
    chown(shm().join(format!("cuframes.{key}")), Some(65534), None).unwrap();
    let refused = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--frames",
            "1",
            "--connect-timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(8), "Permission: {refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("owned by uid 65534"));
    let accepted = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--frames",
            "3",
            "--verify",
            "--allow-other-owner",
        ])
        .output()
        .unwrap();
    assert!(accepted.status.success(), "{accepted:?}");
    signal(&p, libc::SIGTERM);
    assert!(wait_timeout(&mut p, Duration::from_secs(5)).success());
}
