//! Chaos: subscribers killed with SIGKILL while they hold frames, the
//! publisher killed mid-write and restarted, hundreds of rounds. Afterwards
//! no slot stays held, the publisher keeps publishing, the survivor keeps
//! receiving intact frames across restarts.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PUBLISH: &[&str] = &["--seconds", "600", "--slots", "12"];

/// A ring is clean when every subscriber record belongs to a live process
/// and nothing holds more slots than those live subscribers may.
fn clean(key: &str) -> Result<(), String> {
    let s = cuframes::stream_status(key).map_err(|e| e.to_string())?;
    let live = s.stats.active().filter(|r| s.record_alive(r.index)).count();
    let dead = s.stats.active().count() - live;
    let held: u32 = s.stats.active().map(|r| r.held).sum();
    if dead > 0 || s.stats.occupancy as usize > live.max(held as usize) {
        return Err(format!(
            "{dead} dead records, occupancy {} with {live} live subscribers",
            s.stats.occupancy
        ));
    }
    Ok(())
}

fn victim(key: &str, rng: &mut Rng) -> Child {
    let mode = ["newest", "queue"][rng.below(2) as usize];
    let hold = rng.below(15).to_string();
    cuframes()
        .args([
            "subscribe",
            "--key",
            key,
            "--mode",
            mode,
            "--hold-ms",
            &hold,
            "--verify",
            "--timeout-ms",
            "3000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill9_rounds_leave_nothing_held() {
    let rounds: u64 = std::env::var("CUFRAMES_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let key = key("chaos");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut publisher = publisher(&key, "320x240@1000", PUBLISH);
    let mut survivor = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--name",
            "survivor",
            "--mode",
            "newest",
            "--verify",
            "--reconnect",
        ])
        .args([
            "--report",
            "--timeout-ms",
            "5000",
            "--connect-timeout-ms",
            "5000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut leaks, mut restarts, mut kills) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for round in 0..rounds {
        let mut victims: Vec<Child> = (0..2).map(|_| victim(&key, &mut rng)).collect();
        std::thread::sleep(Duration::from_millis(5 + rng.below(30)));
        for v in &mut victims {
            let _ = v.kill(); // SIGKILL, wherever it is: holding a frame, mid-read, connecting
            let _ = v.wait();
            kills += 1;
        }
        if round % 25 == 24 {
            // The publisher dies mid-write at 1000 fps; a new instance takes
            // the key (the dead one's lock went with it).
            let _ = publisher.kill();
            let _ = publisher.wait();
            publisher = common::publisher(&key, "320x240@1000", PUBLISH);
            restarts += 1;
            // The survivor reconnects to the new instance and receives.
            wait_for(Duration::from_secs(10), || {
                cuframes::stream_status(&key).is_ok_and(|s| {
                    s.stats
                        .active()
                        .any(|r| r.name_str() == "survivor" && r.received > 0)
                })
            });
        }
        // The publisher's sweep frees dead subscribers within its period.
        let deadline = Instant::now() + Duration::from_secs(2);
        let verdict = loop {
            match clean(&key) {
                Ok(()) => break Ok(()),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        if let Err(e) = verdict {
            eprintln!("round {round}: leak: {e}");
            leaks += 1;
        }
    }
    // Still publishing and still delivering.
    let before = cuframes::stream_status(&key).unwrap().stats.published;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        cuframes::stream_status(&key).unwrap().stats.published > before,
        "publisher stalled"
    );
    signal(&survivor, libc::SIGTERM);
    let status = wait_timeout(&mut survivor, Duration::from_secs(10));
    let mut out = String::new();
    std::io::Read::read_to_string(survivor.stdout.as_mut().unwrap(), &mut out).unwrap();
    let r = final_report(&out);
    eprintln!(
        "chaos: {rounds} rounds, {kills} subscriber kills, {restarts} publisher restarts, {leaks} leaks, \
         survivor received {} frames ({} damaged) in {:.1} s",
        r["frames"],
        r["bad"],
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "survivor failed: {status:?}\n{out}");
    assert_eq!(r["bad"], "0");
    assert_eq!(leaks, 0);
    let _ = publisher.kill();
    let _ = publisher.wait();
}
