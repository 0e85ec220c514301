//! The command line as a contract: ls, stat, doctor, subscribe --dump.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn ls_and_stat_show_a_live_stream_and_its_subscribers() {
    let key = key("inspect");
    let mut publisher = publisher(
        &key,
        "320x240@200",
        &["--seconds", "30", "--format", "rgb24"],
    );
    let mut sub = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--name",
            "watcher",
            "--mode",
            "queue",
            "--hold-ms",
            "20",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        cuframes::stream_status(&key).is_ok_and(|s| s.stats.active().any(|r| r.received > 3))
    });
    let ls = cuframes().arg("ls").output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    let row = ls
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{key} not listed:\n{ls}"));
    let pid = publisher.id().to_string();
    for want in [pid.as_str(), "yes", "rgb24", "320x240", "host"] {
        assert!(row.contains(want), "{want:?} missing in {row:?}");
    }
    let stat = cuframes().args(["stat", &key]).output().unwrap();
    assert!(stat.status.success());
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("watcher") && stat.contains("Queue") && stat.contains("state       open"),
        "{stat}"
    );
    sub.kill().unwrap();
    sub.wait().unwrap();
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
    let stat = cuframes().args(["stat", &key]).output().unwrap();
    assert_eq!(
        stat.status.code(),
        Some(2),
        "gone after the publisher exits"
    );
}

#[test]
fn dump_writes_a_png_of_the_frame() {
    for (format, color) in [
        ("nv12", 2u8),
        ("gray8", 0),
        ("bgr24", 2),
        ("rgba8", 6),
        ("p010", 2),
    ] {
        let key = key(format);
        let mut publisher = publisher(&key, "64x48@100", &["--seconds", "30", "--format", format]);
        let dir = shm().join(format!("dump-{key}"));
        let out = cuframes()
            .args([
                "subscribe",
                "--key",
                &key,
                "--frames",
                "1",
                "--verify",
                "--dump",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{format}");
        // IHDR: width, height, bit depth, colour type.
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 64);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 48);
        assert_eq!((bytes[24], bytes[25]), (8, color), "{format}");
        signal(&publisher, libc::SIGTERM);
        assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
    }
}

#[test]
fn doctor_passes_on_a_working_machine() {
    shm();
    let out = cuframes().arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("round trip: publish and subscribe work"),
        "{text}"
    );
    assert!(text.contains("CUDA driver"), "{text}");
}

#[test]
fn publish_input_without_ffmpeg_or_file_is_a_clear_error() {
    shm();
    let out = cuframes()
        .args([
            "publish",
            "--key",
            &key("file"),
            "--input",
            "/nonexistent/video.mp4",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ffprobe not found") && err.contains("install ffmpeg"),
        "{err}"
    );
}

#[test]
fn publish_input_decodes_a_video_file_with_ffmpeg() {
    if !have_ffmpeg() {
        return;
    }
    let video = shm().join("clip.mkv");
    test_video(&video, "size=160x120:rate=25:duration=2", &["-c:v", "ffv1"]);
    let key = key("video");
    let mut publisher = cuframes()
        .args(["publish", "--key", &key, "--input"])
        .arg(&video)
        .args(["--loop", "--quiet"])
        .spawn()
        .unwrap();
    let out = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--mode",
            "queue",
            "--frames",
            "10",
            "--report",
            "--dump",
        ])
        .arg(shm().join(format!("dump-{key}")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(final_report(&text)["frames"], "10");
    let status = cuframes::stream_status(&key).unwrap();
    assert_eq!(
        (
            status.info.header.layout.width,
            status.info.header.layout.height
        ),
        (160, 120)
    );
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
}
