//! `cuframes gc`: removes what dead publishers left (segments, lock files,
//! temporary files) and never a live stream, whether its publisher runs,
//! is stopped (`SIGSTOP`) or is starting while `gc` runs. Each test has
//! its own shm directory, since `gc` sweeps the whole directory.

mod common;
use common::{signal, wait_for, wait_timeout};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A child process killed (and reaped) on drop, so a failing test leaves
/// no publisher behind.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A private shm directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        common::shm(); // also removes directories of dead earlier runs
        let dir = common::shm().join(format!("gc-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn cuframes(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cuframes"));
        c.env("CUFRAMES_SHM_DIR", &self.0).stdin(Stdio::null());
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn segment(&self, key: &str) -> PathBuf {
        self.path(&format!("cuframes.{key}"))
    }

    fn lock(&self, key: &str) -> PathBuf {
        self.path(&format!(".cuframes.{key}.lock"))
    }

    /// Starts a test-pattern publisher; `None` if it was refused with
    /// `AlreadyExists` (15) because a `gc` held the key's lock just then.
    fn try_publisher(&self, key: &str) -> Option<Proc> {
        let mut child = Proc(
            self.cuframes()
                .args(["publish", "--key", key, "--testsrc", "64x48@50", "--quiet"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // The segment appears under its name only once the publisher holds
        // its locks (it is renamed into place after they are taken).
        let segment = self.segment(key);
        let mut refused = false;
        wait_for(Duration::from_secs(10), || {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(
                    status.code(),
                    Some(15),
                    "publisher {key} failed: {}",
                    common::stderr_of(&mut child)
                );
                refused = true;
                return true;
            }
            segment.exists() && pid_in(&segment) == Some(child.id())
        });
        (!refused).then_some(child)
    }

    fn publisher(&self, key: &str) -> Proc {
        self.try_publisher(key).expect("publisher refused")
    }

    fn gc(&self, extra: &[&str]) -> String {
        let out = self.cuframes().arg("gc").args(extra).output().unwrap();
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    }

    fn ls_json(&self) -> serde_json::Value {
        let out = self.cuframes().args(["ls", "--json"]).output().unwrap();
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The publisher pid a segment's header names.
fn pid_in(segment: &Path) -> Option<u32> {
    let bytes = std::fs::read(segment).ok()?;
    Some(u32::from_le_bytes(bytes.get(32..36)?.try_into().ok()?))
}

/// A pid that is certainly not running: a child that has exited and been
/// reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn gc_removes_what_dead_publishers_left_and_spares_live_and_stopped_ones() {
    let dir = Dir::new("mixed");
    let live = dir.publisher("live");
    let mut killed = dir.publisher("killed");
    let stopped = dir.publisher("stopped");
    kill9(&mut killed);
    signal(&stopped, libc::SIGSTOP);
    // What a publisher killed while making its segment leaves, and the same
    // for one that is still running (this test process).
    let dead_tmp = dir.path(&format!(".cuframes.half.{}.1f2e3d.tmp", dead_pid()));
    let live_tmp = dir.path(&format!(".cuframes.half.{}.4c5b.tmp", std::process::id()));
    std::fs::write(&dead_tmp, b"").unwrap();
    std::fs::write(&live_tmp, b"").unwrap();
    // A lock file with no stream at all.
    std::fs::write(dir.lock("orphan"), b"").unwrap();
    // Something that only looks like ours is never touched.
    std::fs::create_dir(dir.path("cuframes.adir")).unwrap();
    std::fs::write(dir.path("unrelated.file"), b"").unwrap();

    // ls marks the dead one stale, and only that one.
    let ls = dir.ls_json();
    let stale: Vec<_> = ls["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_owned(),
                s["stale"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stale,
        [
            ("killed".to_owned(), true),
            ("live".to_owned(), false),
            ("stopped".to_owned(), false)
        ]
    );
    let table = dir.cuframes().arg("ls").output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let row = |key: &str| {
        table
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} missing:\n{table}"))
            .to_owned()
    };
    assert!(row("killed").contains("stale"), "{table}");
    assert!(!row("live").contains("stale"), "{table}");
    assert!(!row("stopped").contains("stale"), "{table}");

    // A dry run says what would go and removes nothing.
    let before: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let dry = dir.gc(&["--dry-run"]);
    for gone in [
        dir.segment("killed"),
        dir.lock("killed"),
        dead_tmp.clone(),
        dir.lock("orphan"),
    ] {
        assert!(
            dry.contains(&format!("would remove {}", gone.display())),
            "{}:\n{dry}",
            gone.display()
        );
    }
    assert!(dry.contains("would remove 4 file(s)"), "{dry}");
    for p in &before {
        assert!(p.exists(), "dry run removed {}", p.display());
    }

    let out = dir.gc(&[]);
    for gone in [
        dir.segment("killed"),
        dir.lock("killed"),
        dead_tmp.clone(),
        dir.lock("orphan"),
    ] {
        assert!(!gone.exists(), "{} survived gc:\n{out}", gone.display());
        assert!(
            out.contains(&format!("removed {}", gone.display())),
            "{out}"
        );
    }
    assert!(out.contains("removed 4 file(s)"), "{out}");
    for kept in [
        dir.segment("live"),
        dir.lock("live"),
        dir.segment("stopped"),
        dir.lock("stopped"),
        live_tmp.clone(),
        dir.path("cuframes.adir"),
        dir.path("unrelated.file"),
    ] {
        assert!(kept.exists(), "gc removed {}:\n{out}", kept.display());
    }
    assert!(
        !dir.lock("half").exists(),
        "gc leaves no lock file of its own"
    );

    // The live and the stopped stream still work: a subscriber gets frames
    // from the first, and the second resumes.
    signal(&stopped, libc::SIGCONT);
    for key in ["live", "stopped"] {
        let sub = dir
            .cuframes()
            .args(["subscribe", "--key", key, "--frames", "3", "--verify"])
            .args(["--timeout-ms", "5000"])
            .output()
            .unwrap();
        assert_ok(&sub);
    }
    // Alias, and a second run finds nothing more.
    let again = dir.cuframes().arg("clean").output().unwrap();
    assert_ok(&again);
    let again = String::from_utf8_lossy(&again.stdout);
    assert!(again.contains("nothing to remove"), "{again}");

    for mut p in [live, stopped] {
        signal(&p, libc::SIGTERM);
        assert!(wait_timeout(&mut p, Duration::from_secs(5)).success());
    }
}

/// Takes the key's publisher lock as a starting publisher does (before it
/// renames its new segment over a stale one).
fn hold_key_lock(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    // SAFETY: flock(2) on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    file
}

#[test]
fn gc_needs_both_proofs_of_death() {
    let dir = Dir::new("proofs");
    // A stale segment whose key lock is held: a new publisher is about to
    // rename its segment over it. gc must not unlink that name now.
    let mut killed = dir.publisher("replaced");
    kill9(&mut killed);
    let starting = hold_key_lock(&dir.lock("replaced"));
    let out = dir.gc(&[]);
    assert!(dir.segment("replaced").exists(), "{out}");
    assert!(dir.lock("replaced").exists(), "{out}");
    assert!(out.contains("kept replaced: a publisher holds"), "{out}");
    drop(starting);
    let out = dir.gc(&[]);
    assert!(!dir.segment("replaced").exists(), "{out}");
    assert!(!dir.lock("replaced").exists(), "{out}");

    // A live publisher whose lock file someone deleted: its segment lock
    // (byte 63) still proves it alive.
    let mut live = dir.publisher("unlocked");
    std::fs::remove_file(dir.lock("unlocked")).unwrap();
    let out = dir.gc(&[]);
    assert!(dir.segment("unlocked").exists(), "{out}");
    assert!(
        out.contains(&format!(
            "kept {}: its publisher (pid {}) is alive",
            dir.segment("unlocked").display(),
            live.id()
        )),
        "{out}"
    );
    assert!(
        !dir.lock("unlocked").exists(),
        "gc leaves no lock file of its own"
    );
    let sub = dir
        .cuframes()
        .args([
            "subscribe",
            "--key",
            "unlocked",
            "--frames",
            "2",
            "--verify",
        ])
        .output()
        .unwrap();
    assert_ok(&sub);
    signal(&live, libc::SIGTERM);
    assert!(wait_timeout(&mut live, Duration::from_secs(5)).success());
}

#[test]
fn gc_never_removes_a_live_stream_while_publishers_come_and_go() {
    let dir = Dir::new("race");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // gc runs back to back for the whole test.
    let sweeper = {
        let stop = stop.clone();
        let mut c = dir.cuframes();
        c.arg("gc").stdout(Stdio::null()).stderr(Stdio::piped());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = c.output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        })
    };
    let mut refused = 0;
    for round in 0..12 {
        let key = format!("k{}", round % 3);
        // A start may be refused while a gc holds the key's lock: retry.
        let mut publisher = loop {
            match dir.try_publisher(&key) {
                Some(p) => break p,
                None => refused += 1,
            }
        };
        // While it lives, its segment stays, whatever gc does meanwhile.
        let segment = dir.segment(&key);
        for _ in 0..20 {
            assert_eq!(pid_in(&segment), Some(publisher.id()), "round {round}");
            std::thread::sleep(Duration::from_millis(5));
        }
        if round % 2 == 0 {
            kill9(&mut publisher); // leaves a stale segment for gc (or the next publisher)
        } else {
            signal(&publisher, libc::SIGTERM);
            assert!(wait_timeout(&mut publisher, Duration::from_secs(5)).success());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = sweeper.join().unwrap();
    eprintln!("{runs} gc runs, {refused} publisher starts refused while gc held the key");
    // Nothing alive any more: one last run leaves the directory empty.
    dir.gc(&[]);
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
