//! Shared helpers for the process tests: the `cuframes` binary, a private
//! shm directory, and waiting on streams.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A private shm directory for this test binary (set in our environment,
/// so library calls use it, and passed to every child).
pub fn shm() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Remove directories left by earlier test runs whose process is gone.
        for e in std::fs::read_dir("/dev/shm")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("cuframes-test-")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if cuframes::process_start_time(pid).is_none() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = PathBuf::from(format!("/dev/shm/cuframes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("CUFRAMES_SHM_DIR", &dir);
        dir
    })
}

/// `cuframes` with the private shm directory (`CUFRAMES_BIN` names another
/// build of it, for test binaries run away from their build tree).
pub fn cuframes() -> Command {
    let bin =
        std::env::var_os("CUFRAMES_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cuframes").into());
    let mut c = Command::new(bin);
    c.env("CUFRAMES_SHM_DIR", shm()).stdin(Stdio::null());
    c
}

/// A unique key per call.
pub fn key(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts a test-pattern publisher and waits until its stream is open.
pub fn publisher(key: &str, spec: &str, extra: &[&str]) -> Child {
    shm();
    let child = cuframes()
        .args(["publish", "--key", key, "--testsrc", spec, "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(key)
            .is_ok_and(|s| s.publisher_alive && s.info.header.publisher_pid == child.id())
    });
    child
}

/// What a publisher started by [`publisher`] wrote to stderr (after exit).
pub fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(e) = child.stderr.as_mut() {
        std::io::Read::read_to_string(e, &mut s).unwrap();
    }
    s
}

/// Polls `cond` until it holds; panics after `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a child up to `limit`, killing it after that.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The last `report` line's fields, as (key, value) pairs.
pub fn final_report(stdout: &str) -> std::collections::HashMap<String, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("report "))
        .expect("a report line");
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A small xorshift generator (tests need no crypto).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Whether ffmpeg and ffprobe are on PATH; says the test is skipped if not.
pub fn have_ffmpeg() -> bool {
    let ok = ["ffmpeg", "ffprobe"]
        .iter()
        .all(|t| Command::new(t).arg("-version").output().is_ok());
    if !ok {
        eprintln!("skipped: ffmpeg is not installed");
    }
    ok
}

/// Writes `path` from ffmpeg's `testsrc` (`testsrc` options such as
/// `size=320x240:rate=25:duration=2`), encoded with `codec` (ffmpeg
/// arguments, e.g. `["-c:v", "ffv1"]`).
pub fn test_video(path: &std::path::Path, testsrc: &str, codec: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc={testsrc}"))
        .args(codec)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
