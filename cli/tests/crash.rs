//! Crash safety with real processes, real shared memory and real signals:
//! a subscriber in another pid namespace, stopped with SIGSTOP, keeps its
//! frame; a stopped lossless subscriber is evicted (never overwritten) while
//! the publisher goes on at rate; a truncated segment file ends every process
//! with a typed error instead of SIGBUS.

mod common;
use common::*;
use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests measure rates and timing on small machines: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Children killed (SIGKILL) and reaped when the test ends, also when it
/// panics; `extra` are pids of grandchildren (the process inside a pid
/// namespace), killed first while their parent still runs (so the pid
/// cannot have been reused).
#[derive(Default)]
struct Procs {
    children: Vec<Child>,
    extra: Vec<(i32, usize)>,
}

impl Procs {
    fn add(&mut self, child: Child) -> usize {
        self.children.push(child);
        self.children.len() - 1
    }
    fn get(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for &(pid, parent) in &self.extra {
            if matches!(self.children[parent].try_wait(), Ok(None)) {
                // SAFETY: kill(2) on a pid whose parent (our child) still
                // runs and has therefore not reaped it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn read_all(r: Option<&mut impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

/// Stdout and stderr of an exited child.
fn outputs(child: &mut Child) -> (String, String) {
    (
        read_all(child.stdout.as_mut()),
        read_all(child.stderr.as_mut()),
    )
}

/// A `cuframes subscribe` with `--verify --report`, stdout and stderr piped.
fn subscriber(key: &str, name: &str, mode: &str, extra: &[&str]) -> Child {
    cuframes()
        .args(["subscribe", "--key", key, "--name", name, "--mode", mode])
        .args(["--verify", "--report"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn record<'a>(
    s: &'a cuframes::StreamStatus,
    name: &str,
) -> Option<&'a cuframes::core::SubscriberStats> {
    s.stats.active().find(|r| r.name_str() == name)
}

/// Field 3 of /proc/PID/stat (R, S, T, Z...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) on a process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Sends SIGSTOP and waits until the kernel reports the process stopped.
fn stop(pid: i32) {
    kill(pid, libc::SIGSTOP);
    wait_for(Duration::from_secs(5), || proc_state(pid) == Some('T'));
}

fn heartbeat_age(r: &cuframes::core::SubscriberStats) -> Duration {
    Duration::from_nanos(cuframes::now_ns().saturating_sub(r.heartbeat_ns))
}

/// `cuframes stat KEY`'s line for subscriber `name`.
fn stat_line(key: &str, name: &str) -> String {
    let out = cuframes().args(["stat", key]).output().unwrap();
    assert!(out.status.success(), "cuframes stat {key}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no line for {name} in:\n{text}"))
        .to_owned()
}

fn num(r: &HashMap<String, String>, k: &str) -> u64 {
    r[k].parse()
        .unwrap_or_else(|e| panic!("report field {k}={:?}: {e}", r[k]))
}

/// The pid of `parent`'s only child (the process `unshare --fork` runs).
fn child_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// Why `unshare --pid --fork` cannot be used here, if it cannot.
fn no_pid_namespaces() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("no unshare: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "unshare --pid --fork fails: {:?} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

#[test]
fn subscriber_in_another_pid_namespace_keeps_its_frame() {
    if let Some(why) = no_pid_namespaces() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let key = key("crash-ns");
    let mut procs = Procs::default();
    // 4 slots at 120 fps: one held, one head, two rewritten constantly.
    let pubi = procs.add(publisher(
        &key,
        "320x240@120",
        &["--seconds", "60", "--slots", "4"],
    ));
    const HOLD_MS: u64 = 7000;
    let name = "ns-holder";
    let unshare = procs.add(
        Command::new("unshare")
            .args(["--pid", "--fork"])
            .arg(env!("CARGO_BIN_EXE_cuframes"))
            .args(["subscribe", "--key", &key, "--name", name])
            .args(["--mode", "newest", "--frames", "1", "--verify", "--report"])
            .args(["--hold-ms", &HOLD_MS.to_string(), "--timeout-ms", "5000"])
            .env("CUFRAMES_SHM_DIR", shm())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let unshare_pid = procs.get(unshare).id();
    let mut inner = None;
    wait_for(Duration::from_secs(5), || {
        inner = child_of(unshare_pid);
        inner.is_some()
    });
    let inner = inner.unwrap();
    procs.extra.push((inner, unshare));
    // It really runs in another pid namespace, as pid 1 there.
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid line");
    assert_eq!(
        nspid.split_whitespace().skip(1).collect::<Vec<_>>(),
        [inner.to_string().as_str(), "1"],
        "{nspid}"
    );

    // It takes a frame and holds it.
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key)
            .is_ok_and(|s| record(&s, name).is_some_and(|r| r.held == 1 && r.received == 1))
    });
    let hold_start = Instant::now();
    let s = cuframes::stream_status(&key).unwrap();
    let r = *record(&s, name).unwrap();
    assert_eq!(r.pid, 1, "the record carries its namespace's pid");
    assert_ne!(r.pid_ns, cuframes::own_pid_ns(), "and another namespace");
    assert!(s.record_alive(r.index));

    // Stopped for 4.5 s of the 7 s hold: its heartbeat goes silent for
    // longer than the old 3 s heartbeat timeout.
    std::thread::sleep(Duration::from_millis(500));
    stop(inner);
    let stopped_at = Instant::now();
    let published_at_stop = cuframes::stream_status(&key).unwrap().stats.published;
    let mut samples = 0;
    while stopped_at.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(250));
        let s = cuframes::stream_status(&key).unwrap();
        let now = record(&s, name).unwrap_or_else(|| {
            panic!(
                "record of the stopped, namespaced subscriber freed after {:?}",
                stopped_at.elapsed()
            )
        });
        assert_eq!(
            (now.index, now.generation, now.held),
            (r.index, r.generation, 1),
            "same record, still holding its frame"
        );
        assert!(s.record_alive(r.index), "record judged dead");
        samples += 1;
    }
    let s = cuframes::stream_status(&key).unwrap();
    let now = record(&s, name).unwrap();
    let silent = heartbeat_age(now);
    let line = stat_line(&key, name);
    eprintln!(
        "stopped {:?}, heartbeat silent {silent:?}: {line}",
        stopped_at.elapsed()
    );
    assert!(
        silent >= Duration::from_secs(4),
        "heartbeat should be silent while stopped: {silent:?}"
    );
    assert!(
        line.contains(" alive ") && line.contains(" held 1 "),
        "cuframes stat: {line}"
    );
    let published = s.stats.published - published_at_stop;
    let secs = stopped_at.elapsed().as_secs_f64();
    eprintln!(
        "published {published} frames in {secs:.1} s while it was stopped ({samples} samples)"
    );
    assert!(
        published as f64 >= 0.5 * 120.0 * secs,
        "publisher should keep publishing at rate: {published} in {secs:.1} s"
    );
    assert!(procs.get(pubi).try_wait().unwrap().is_none());
    kill(inner, libc::SIGCONT);

    // It wakes, re-verifies the frame it held for 7 s, and exits 0.
    let status = wait_timeout(procs.get(unshare), Duration::from_secs(15));
    let held_for = hold_start.elapsed();
    let (out, err) = outputs(procs.get(unshare));
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    let rep = final_report(&out);
    assert_eq!(
        (rep["frames"].as_str(), rep["bad"].as_str()),
        ("1", "0"),
        "{out}\n{err}"
    );
    assert!(held_for >= Duration::from_secs(6), "held only {held_for:?}");
    // Its own deregistration freed the record.
    wait_for(Duration::from_secs(3), || {
        cuframes::stream_status(&key).is_ok_and(|s| record(&s, name).is_none())
    });
    signal(procs.get(pubi), libc::SIGTERM);
    assert!(wait_timeout(procs.get(pubi), Duration::from_secs(5)).success());
    eprintln!(
        "namespaced subscriber held its frame {held_for:?} (4.5 s stopped) and found it intact; test took {:?}",
        started.elapsed()
    );
}

#[test]
fn stopped_lossless_subscriber_is_evicted_not_overwritten() {
    let _serial = serial();
    let started = Instant::now();
    let key = key("crash-evict");
    let mut procs = Procs::default();
    const FPS: f64 = 60.0;
    const SLOTS: u64 = 8;
    const SLOW_FRAMES: u64 = 180;
    let pubi = procs.add(publisher(
        &key,
        "320x240@60",
        &[
            "--seconds",
            "120",
            "--slots",
            "8",
            "--policy",
            "block",
            "--block-timeout-ms",
            "300",
        ],
    ));
    let newest = procs.add(subscriber(
        &key,
        "newest",
        "newest",
        &["--timeout-ms", "5000"],
    ));
    let queue = procs.add(subscriber(
        &key,
        "queue",
        "queue",
        &["--timeout-ms", "5000"],
    ));
    let slow = procs.add(subscriber(
        &key,
        "slow",
        "queue",
        &[
            "--hold-ms",
            "10",
            "--frames",
            &SLOW_FRAMES.to_string(),
            "--timeout-ms",
            "5000",
        ],
    ));
    let slow_pid = procs.get(slow).id() as i32;
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key).is_ok_and(|s| {
            ["newest", "queue"]
                .iter()
                .all(|n| record(&s, n).is_some_and(|r| r.received > 10))
                && record(&s, "slow").is_some_and(|r| r.received >= 30)
        })
    });

    // Stop it while it holds a frame (it holds one ~60% of the time).
    let mut tries = 0;
    let (before, rec) = loop {
        tries += 1;
        assert!(
            tries < 200,
            "never caught the slow subscriber holding a frame"
        );
        wait_for(Duration::from_secs(5), || {
            cuframes::stream_status(&key)
                .is_ok_and(|s| record(&s, "slow").is_some_and(|r| r.held == 1))
        });
        stop(slow_pid);
        let s = cuframes::stream_status(&key).unwrap();
        let r = *record(&s, "slow").unwrap();
        if r.held == 1 {
            break (s, r);
        }
        kill(slow_pid, libc::SIGCONT);
    };
    let stopped_at = Instant::now();
    assert!(
        rec.received + 60 <= SLOW_FRAMES,
        "stopped too late to see it go on afterwards: {rec:?}"
    );
    eprintln!(
        "slow subscriber stopped holding a frame after {} frames (try {tries})",
        rec.received
    );

    // 10 s stopped: the publisher goes on at rate, the others keep receiving.
    let mut last = before.clone();
    let mut last_t = Instant::now();
    while stopped_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_secs(1));
        let s = cuframes::stream_status(&key).unwrap();
        let dt = last_t.elapsed().as_secs_f64();
        let got = |st: &cuframes::StreamStatus, n: &str| record(st, n).unwrap().received;
        let line = format!(
            "t={:.1}s published +{} newest +{} queue +{} slow held {} evictions {} alive {}",
            stopped_at.elapsed().as_secs_f64(),
            s.stats.published - last.stats.published,
            got(&s, "newest") - got(&last, "newest"),
            got(&s, "queue") - got(&last, "queue"),
            record(&s, "slow").unwrap().held,
            record(&s, "slow").unwrap().evictions,
            s.record_alive(rec.index)
        );
        eprintln!("{line}");
        let slow_now = record(&s, "slow").expect("stopped subscriber's record kept");
        assert_eq!(
            (
                slow_now.index,
                slow_now.generation,
                slow_now.held,
                slow_now.received
            ),
            (rec.index, rec.generation, 1, rec.received),
            "{line}"
        );
        assert!(s.record_alive(rec.index), "{line}");
        assert!(
            (s.stats.published - last.stats.published) as f64 >= 0.25 * FPS * dt,
            "publisher stalled: {line}"
        );
        for n in ["newest", "queue"] {
            assert!(got(&s, n) > got(&last, n), "{n} starved: {line}");
        }
        (last, last_t) = (s, Instant::now());
    }
    let during = &last;
    let stop_secs = stopped_at.elapsed().as_secs_f64();
    let published = during.stats.published - before.stats.published;
    eprintln!("published {published} frames in {stop_secs:.1} s while it was stopped");
    assert!(
        published as f64 >= 0.75 * FPS * stop_secs,
        "publisher not at rate: {published} in {stop_secs:.1} s"
    );
    assert_eq!(
        record(during, "slow").unwrap().evictions,
        1,
        "evicted once per lag"
    );
    for n in ["newest", "queue"] {
        assert_eq!(record(during, n).unwrap().evictions, 0, "{n} evicted");
    }
    kill(slow_pid, libc::SIGCONT);

    // It wakes, re-verifies its held frame, hears Lagged once, goes on.
    let status = wait_timeout(procs.get(slow), Duration::from_secs(20));
    let (out, err) = outputs(procs.get(slow));
    eprintln!("slow: {}\n{}", out.lines().last().unwrap_or(""), err.trim());
    assert!(status.success(), "{status:?}\n{out}\n{err}");
    let r = final_report(&out);
    assert_eq!(num(&r, "frames"), SLOW_FRAMES, "{out}");
    assert_eq!(
        num(&r, "bad"),
        0,
        "held frame rewritten or a damaged frame:\n{err}"
    );
    assert!(num(&r, "lagged") >= 1, "no Lagged reported: {out}\n{err}");
    // Evicted at seq c (the frame after the one it held), it rejoins at the
    // head: at least what was published while it was stopped, less the
    // frames that were already in the ring when it stopped.
    let total = cuframes::stream_status(&key).unwrap().stats.published;
    let dropped = num(&r, "dropped");
    assert!(
        dropped >= published.saturating_sub(SLOTS) && dropped <= total,
        "dropped {dropped} should cover the {published} frames published while stopped (total {total})"
    );
    assert!(
        !err.contains("rewritten while held") && !err.contains("damaged"),
        "{err}"
    );

    // The healthy ones: nothing lost, nothing damaged, never evicted.
    for (i, n) in [(newest, "newest"), (queue, "queue")] {
        signal(procs.get(i), libc::SIGTERM);
        let status = wait_timeout(procs.get(i), Duration::from_secs(5));
        let (out, err) = outputs(procs.get(i));
        eprintln!("{n}: {}", out.lines().last().unwrap_or(""));
        assert!(status.success(), "{n}: {status:?}\n{out}\n{err}");
        let r = final_report(&out);
        assert_eq!(num(&r, "bad"), 0, "{n}: {err}");
        assert_eq!(num(&r, "lagged"), 0, "{n} evicted: {err}");
        assert!(
            num(&r, "frames") as f64 >= 0.5 * FPS * stop_secs,
            "{n}: {out}"
        );
        if n == "queue" {
            assert_eq!((num(&r, "dropped"), num(&r, "gaps")), (0, 0), "{n}: {out}");
        }
    }
    signal(procs.get(pubi), libc::SIGTERM);
    assert!(wait_timeout(procs.get(pubi), Duration::from_secs(5)).success());
    eprintln!("test took {:?}", started.elapsed());
}

/// Exit code of a process that must end with a typed error, not a signal.
fn typed_failure(who: &str, status: ExitStatus, err: &str) -> i32 {
    assert_eq!(
        status.signal(),
        None,
        "{who} died of signal {:?}:\n{err}",
        status.signal()
    );
    let code = status.code().unwrap();
    assert_ne!(code, 0, "{who} exited 0 from a truncated segment:\n{err}");
    code
}

fn truncate_under_running_processes(cut: fn(u64) -> u64, what: &str) {
    let key = key("crash-trunc");
    let mut procs = Procs::default();
    let pubi = procs.add(publisher(
        &key,
        "320x240@120",
        &["--seconds", "60", "--slots", "6"],
    ));
    let newest = procs.add(subscriber(&key, "newest", "newest", &[]));
    let queue = procs.add(subscriber(&key, "queue", "queue", &[]));
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key).is_ok_and(|s| {
            ["newest", "queue"]
                .iter()
                .all(|n| record(&s, n).is_some_and(|r| r.received > 10))
        })
    });
    let path = shm().join(format!("cuframes.{key}"));
    let contents = std::fs::read(&path).unwrap();
    let len = contents.len() as u64;
    let to = cut(len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(to)
        .unwrap();
    let cut_at = Instant::now();
    // A newcomer right after the cut.
    let newcomer = cuframes()
        .args(["subscribe", "--key", &key, "--verify", "--frames", "1"])
        .args(["--connect-timeout-ms", "1000", "--timeout-ms", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let newcomer = procs.add(newcomer);
    let mut codes = Vec::new();
    for (i, who) in [
        (pubi, "publisher"),
        (newest, "newest subscriber"),
        (queue, "queue subscriber"),
        (newcomer, "newcomer"),
    ] {
        let status = wait_timeout(procs.get(i), Duration::from_secs(5));
        let after = cut_at.elapsed();
        let (_, err) = outputs(procs.get(i));
        let code = typed_failure(who, status, &err);
        eprintln!(
            "{what}: {who} exited {code} within {after:?}: {}",
            err.lines().last().unwrap_or("")
        );
        codes.push((who, code));
    }
    for &(who, code) in &codes[..3] {
        assert_eq!(code, 11, "{what}: {who} should report Corrupt: {codes:?}");
    }
    // The newcomer found the cut file (Corrupt), or none once the publisher
    // had removed it (NotFound).
    assert!(matches!(codes[3].1, 2 | 11), "{what}: {codes:?}");

    // A segment file left cut like that (the publisher removed its own; put
    // one back): a new subscriber fails cleanly and at once.
    std::fs::write(&path, &contents[..to as usize]).unwrap();
    let t = Instant::now();
    let out = cuframes()
        .args(["subscribe", "--key", &key, "--verify", "--frames", "1"])
        .args(["--connect-timeout-ms", "1000", "--timeout-ms", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let code = typed_failure("subscriber to a cut file", out.status, &err);
    eprintln!(
        "{what}: subscriber to the cut file exited {code} in {:?}: {}",
        t.elapsed(),
        err.trim()
    );
    assert_eq!(code, 11, "{err}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn truncated_segment_gives_typed_errors_not_sigbus() {
    let _serial = serial();
    let started = Instant::now();
    truncate_under_running_processes(|_| 0, "truncated to 0");
    truncate_under_running_processes(|len| len / 2, "truncated to half");
    eprintln!("test took {:?}", started.elapsed());
}
