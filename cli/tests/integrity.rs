//! Publisher and subscribers as separate processes: every frame checked for
//! content integrity (seq and checksum stamped in its pixels).

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;

fn subscriber(
    key: &str,
    name: &str,
    mode: &str,
    frames: u64,
    extra: &[&str],
) -> std::process::Child {
    cuframes()
        .args([
            "subscribe",
            "--key",
            key,
            "--name",
            name,
            "--mode",
            mode,
            "--verify",
            "--report",
        ])
        .args(["--frames", &frames.to_string(), "--timeout-ms", "5000"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn three_subscribers_get_intact_frames_and_queue_misses_none() {
    let key = key("integrity");
    let mut publisher = publisher(&key, "640x480@400", &["--seconds", "60"]);
    let subs = [
        subscriber(&key, "newest-a", "newest", 300, &[]),
        subscriber(&key, "newest-b", "newest", 300, &[]),
        subscriber(&key, "lossless", "queue", 600, &[]),
    ];
    for (i, child) in subs.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "subscriber {i}: {:?}\n{text}",
            out.status
        );
        let r = final_report(&text);
        assert_eq!(r["bad"], "0");
        if i == 2 {
            // Under the Block policy a lossless reader sees every frame from
            // its first, in order: no gap, nothing dropped.
            assert_eq!(
                (
                    r["frames"].as_str(),
                    r["gaps"].as_str(),
                    r["dropped"].as_str()
                ),
                ("600", "0", "0")
            );
        }
    }
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
    assert!(
        cuframes::stream_status(&key).is_err(),
        "segment removed on exit"
    );
}

#[test]
fn drop_oldest_counts_what_a_slow_lossless_reader_lost() {
    let key = key("dropoldest");
    let mut publisher = publisher(
        &key,
        "320x240@1000",
        &["--seconds", "60", "--policy", "drop-oldest", "--slots", "4"],
    );
    let out = subscriber(&key, "slow", "queue", 60, &["--hold-ms", "5"])
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let r = final_report(&text);
    assert_eq!(r["bad"], "0", "frames skipped, never torn");
    let dropped: u64 = r["dropped"].parse().unwrap();
    let gaps: u64 = r["gaps"].parse().unwrap();
    assert!(
        dropped > 0 && gaps > 0,
        "a 5 ms reader of a 1000 fps stream must drop: {r:?}"
    );
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
}

#[test]
fn block_policy_throttles_the_publisher_instead_of_dropping() {
    let key = key("block");
    let mut publisher = publisher(&key, "320x240@0", &["--seconds", "60", "--slots", "4"]);
    let out = subscriber(&key, "slow", "queue", 40, &["--hold-ms", "3"])
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let r = final_report(&text);
    assert_eq!(
        (r["bad"].as_str(), r["gaps"].as_str(), r["dropped"].as_str()),
        ("0", "0", "0")
    );
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
}

#[test]
fn closed_stream_ends_subscribers_cleanly() {
    let key = key("close");
    let mut publisher = publisher(&key, "64x64@200", &["--frames", "100000"]);
    let mut sub = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--mode",
            "queue",
            "--verify",
            "--report",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        cuframes::stream_status(&key).is_ok_and(|s| s.stats.active().any(|r| r.received > 5))
    });
    signal(&publisher, libc::SIGINT);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
    // Without --frames, a closed stream is a normal end: exit 0.
    assert!(wait_timeout(&mut sub, Duration::from_secs(5)).success());
}

#[test]
fn demo_runs_with_subscriber_processes() {
    shm();
    let out = cuframes()
        .args([
            "demo",
            "--seconds",
            "2",
            "--subscribers",
            "2",
            "--size",
            "640x360",
            "--fps",
            "120",
            "--quiet",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("sub0-newest") && text.contains("sub1-queue"),
        "{text}"
    );
}

#[test]
fn killed_publisher_is_reported_as_gone_and_a_new_one_is_picked_up() {
    let key = key("gone");
    let mut publisher = publisher(&key, "64x64@200", &["--seconds", "60"]);
    let mut plain = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--verify",
            "--timeout-ms",
            "5000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reconnecting = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--name",
            "phoenix",
            "--verify",
            "--reconnect",
            "--report",
        ])
        .args(["--timeout-ms", "5000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        cuframes::stream_status(&key)
            .is_ok_and(|s| s.stats.active().filter(|r| r.received > 0).count() == 2)
    });
    publisher.kill().unwrap();
    publisher.wait().unwrap();
    // Without --reconnect: the typed PublisherGone (exit status 4).
    let status = wait_timeout(&mut plain, Duration::from_secs(5));
    let err = stderr_of(&mut plain);
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("PublisherGone"), "{err}");
    // With --reconnect: picks up the next publisher instance (new epoch).
    let old_epoch = cuframes::stream_status(&key).unwrap().info.header.epoch;
    let mut second = common::publisher(&key, "64x64@200", &["--seconds", "60"]);
    let new_epoch = cuframes::stream_status(&key).unwrap().info.header.epoch;
    assert_ne!(old_epoch, new_epoch);
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key).is_ok_and(|s| {
            s.stats
                .active()
                .any(|r| r.name_str() == "phoenix" && r.received > 5)
        })
    });
    signal(&second, libc::SIGTERM);
    assert!(wait_timeout(&mut second, Duration::from_secs(5)).success());
    // The clean close ends the reconnecting subscriber's wait with Closed,
    // which it waits out; stop it and check it never saw a damaged frame.
    signal(&reconnecting, libc::SIGTERM);
    let out = reconnecting.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(final_report(&text)["bad"], "0");
}
