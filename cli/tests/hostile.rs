//! Hostile input: a process scribbling random bytes over a live segment,
//! malformed segment files, and bad keys. Every outcome is a typed error
//! (exit status = error code), never a crash, a panic or a hang.

mod common;
use common::*;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Exit statuses a subscriber may end with: success or one of our codes.
fn typed(status: ExitStatus) -> bool {
    status.signal().is_none() && matches!(status.code(), Some(0..=16))
}

fn subscribe_once(key: &str) -> (ExitStatus, String) {
    let out = cuframes()
        .args([
            "subscribe",
            "--key",
            key,
            "--frames",
            "1",
            "--connect-timeout-ms",
            "200",
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn scribbling_over_a_live_segment_yields_typed_errors_only() {
    let key = key("scribble");
    let mut publisher = publisher(&key, "320x240@500", &["--seconds", "120", "--slots", "8"]);
    let path = shm().join(format!("cuframes.{key}"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let info = cuframes::stream_status(&key).unwrap().info;
    let tables_end = info.header.backend_offset;
    let seg_len = info.header.segment_len;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    let mut subs = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        if subs.len() < 3 {
            subs.push(
                cuframes()
                    .args([
                        "subscribe",
                        "--key",
                        &key,
                        "--verify",
                        "--frames",
                        "100000",
                        "--timeout-ms",
                        "300",
                    ])
                    .args([
                        "--mode",
                        ["newest", "queue"][rng.below(2) as usize],
                        "--connect-timeout-ms",
                        "300",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        // Mostly the control block, slot table, index and records; now
        // and then the header or the pixels.
        let span = if rng.below(10) == 0 {
            seg_len
        } else {
            tables_end
        };
        let at = rng.below(span - 8);
        let bytes = rng.next().to_le_bytes();
        file.write_at(&bytes[..1 + rng.below(8) as usize], at)
            .unwrap();
        std::thread::sleep(Duration::from_micros(200));
        subs.retain_mut(|c| match c.try_wait().unwrap() {
            None => true,
            Some(status) => {
                let mut err = String::new();
                std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(typed(status), "subscriber crashed: {status:?}\n{err}");
                let kind = err
                    .lines()
                    .find_map(|l| l.strip_prefix("error["))
                    .map_or("ok", |l| l.split('/').next().unwrap());
                *outcomes.entry(kind.to_owned()).or_default() += 1;
                false
            }
        });
    }
    for mut c in subs {
        c.kill().unwrap();
        let status = c.wait().unwrap();
        assert!(
            status.signal() == Some(libc::SIGKILL) || typed(status),
            "{status:?}"
        );
    }
    eprintln!("scribble outcomes: {outcomes:?}");
    assert!(!outcomes.is_empty(), "subscribers ran and ended");
    // The publisher survives scribbled shared memory too.
    assert!(publisher.try_wait().unwrap().is_none(), "publisher died");
    signal(&publisher, libc::SIGTERM);
    let status = wait_timeout(&mut publisher, Duration::from_secs(5));
    let err = stderr_of(&mut publisher);
    assert!(
        typed(status) && !err.contains("panicked"),
        "publisher: {status:?}\n{err}"
    );
}

/// Copies the bytes of a real segment into `cuframes.<key>`, altered by `f`.
fn forged(key: &str, f: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
    let source = common::key("source");
    let layout = cuframes::FrameLayout::new(cuframes::PixelFormat::Gray8, 32, 32, 64).unwrap();
    let _p = cuframes::Publisher::create(&source, layout, Default::default()).unwrap();
    let mut bytes = std::fs::read(shm().join(format!("cuframes.{source}"))).unwrap();
    f(&mut bytes);
    let path = shm().join(format!("cuframes.{key}"));
    std::fs::write(&path, &bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn malformed_segments_are_refused_with_their_code() {
    type Case = (&'static str, Box<dyn FnOnce(&mut Vec<u8>)>, i32);
    let cases: Vec<Case> = vec![
        ("magic", Box::new(|b| b[0] = b'X'), 11),
        (
            "version",
            Box::new(|b| b[8..10].copy_from_slice(&1u16.to_le_bytes())),
            6,
        ),
        ("small", Box::new(|b| b.truncate(10)), 11),
        ("truncated", Box::new(|b| b.truncate(b.len() - 4096)), 11),
        (
            "slots",
            Box::new(|b| b[56..60].copy_from_slice(&1000u32.to_le_bytes())),
            11,
        ),
        (
            "offset",
            Box::new(|b| b[88..96].copy_from_slice(&u64::MAX.to_le_bytes())),
            11,
        ),
    ];
    for (tag, corrupt, code) in cases {
        let k = key(tag);
        forged(&k, corrupt);
        let (status, err) = subscribe_once(&k);
        assert_eq!(status.code(), Some(code), "{tag}: {err}");
        let out = cuframes().args(["stat", &k]).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "stat {tag}");
    }
    // Listing shows them as unreadable instead of failing.
    let out = cuframes().arg("ls").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreadable"));
}

#[test]
fn foreign_or_world_writable_segments_are_refused() {
    let k = key("worldwritable");
    let path = forged(&k, |_| {});
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (status, err) = subscribe_once(&k);
    assert_eq!(status.code(), Some(8), "{err}");

    let k = key("foreign");
    let path = forged(&k, |_| {});
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown(2) on a path we created; fails harmlessly if not root.
    if unsafe { libc::chown(c.as_ptr(), 65534, 65534) } != 0 {
        eprintln!("skipped foreign-owner case: not allowed to chown here (not root)");
        return;
    }
    let (status, err) = subscribe_once(&k);
    assert_eq!(status.code(), Some(8), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
}

#[test]
fn bad_keys_and_missing_streams() {
    shm();
    for bad in ["../x", "", "a/b", ".hidden", "é", &"k".repeat(65)] {
        let (status, err) = subscribe_once(bad);
        assert_eq!(status.code(), Some(5), "{bad:?}: {err}");
        let out = cuframes()
            .args([
                "publish",
                "--key",
                bad,
                "--testsrc",
                "64x64@1",
                "--frames",
                "1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(5), "publish {bad:?}");
    }
    let (status, err) = subscribe_once(&key("absent"));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn second_publisher_on_a_live_key_is_refused() {
    let k = key("twice");
    let mut first = publisher(&k, "64x64@100", &["--seconds", "30"]);
    let out = cuframes()
        .args([
            "publish",
            "--key",
            &k,
            "--testsrc",
            "64x64@100",
            "--frames",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(15),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(&first, libc::SIGTERM);
    assert!(wait_timeout(&mut first, Duration::from_secs(5)).success());
}

#[test]
fn cuda_publish_without_driver_is_a_cuda_error() {
    if cuframes_cuda::is_available() {
        eprintln!("skipped: a CUDA driver is present (the GPU tests cover --cuda)");
        return;
    }
    let dir = shm();
    let k = key("gpu");
    let out = cuframes()
        .args(["publish", "--key", &k, "--testsrc", "64x64@1", "--cuda"])
        .args(["--device", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("libcuda"), "the driver's message: {stderr}");
    assert!(
        !dir.join(format!("cuframes.{k}")).exists(),
        "a failed CUDA publisher leaves no segment"
    );
}
