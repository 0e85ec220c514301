//! `cuframes demo`: a publisher and N subscriber processes on one stream,
//! with a live line of rates, handoff latency and drops.

use crate::latency::human_ns;
use crate::live::{publish_pattern, status_line, Pacer};
use crate::{invalid, parse_size, stdout_is_tty};
use cuframes::{Error, ErrorCode, FrameLayout, PixelFormat, Publisher, PublisherOptions, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How long to run (Ctrl-C ends it early).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Subscriber processes.
    #[arg(long, default_value_t = 3)]
    pub subscribers: usize,
    /// Frame size.
    #[arg(long, default_value = "1920x1080", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Frames per second (0: as fast as possible).
    #[arg(long, default_value_t = 60.0)]
    pub fps: f64,
    /// Subscriber modes: newest, queue, or mixed (alternating).
    #[arg(long, default_value = "mixed")]
    pub mode: String,
    /// Slots in the ring.
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// Only the final summary (no live line).
    #[arg(long, short)]
    pub quiet: bool,
}

/// One `report` line of a subscriber process.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub frames: u64,
    pub fps: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub dropped: u64,
    pub bad: u64,
    pub last: bool,
}

impl Report {
    /// Parses `report name=... frames=... ...`; returns the name too.
    pub fn parse(line: &str) -> Option<(String, Report)> {
        let rest = line.strip_prefix("report ")?;
        let mut name = None;
        let mut r = Report::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "name" => name = Some(v.to_owned()),
                "frames" => r.frames = v.parse().ok()?,
                "fps" => r.fps = v.parse().ok()?,
                "p50_ns" => r.p50_ns = v.parse().ok()?,
                "p99_ns" => r.p99_ns = v.parse().ok()?,
                "dropped" => r.dropped = v.parse().ok()?,
                "bad" => r.bad = v.parse().ok()?,
                "final" => r.last = v == "1",
                _ => {}
            }
        }
        Some((name?, r))
    }
}

/// Subscriber processes reporting into a shared table.
pub struct Fleet {
    children: Vec<Child>,
    pub reports: Arc<Mutex<BTreeMap<String, Report>>>,
}

impl Fleet {
    /// Starts `n` `cuframes subscribe --report --verify` processes.
    pub fn spawn(key: &str, n: usize, mode: &str, extra: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
        let reports = Arc::new(Mutex::new(BTreeMap::new()));
        let mut children = Vec::new();
        for i in 0..n {
            let m = match mode {
                "mixed" => ["newest", "queue"][i % 2],
                m => m,
            };
            let name = format!("sub{i}-{m}");
            let mut child = Command::new(&exe)
                .args([
                    "subscribe",
                    "--key",
                    key,
                    "--name",
                    &name,
                    "--mode",
                    m,
                    "--verify",
                    "--report",
                ])
                .args(["--timeout-ms", "5000", "--connect-timeout-ms", "5000"])
                .args(extra)
                .stdout(Stdio::piped())
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| Error::io("spawn subscriber", e))?;
            let out = child.stdout.take().expect("piped");
            let table = reports.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Some((name, r)) = Report::parse(&line) {
                        table.lock().expect("report table").insert(name, r);
                    }
                }
            });
            children.push(child);
        }
        Ok(Self { children, reports })
    }

    /// Waits for every process (killing stragglers after `grace`); returns
    /// how many failed.
    pub fn wait(mut self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut failed = 0;
        for c in &mut self.children {
            let status = loop {
                match c.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        break c.wait().ok();
                    }
                }
            };
            failed += usize::from(!status.is_some_and(|s| s.success()));
        }
        // Let the reader threads take the final lines.
        std::thread::sleep(Duration::from_millis(50));
        failed
    }
}

pub fn run(args: Args) -> Result<()> {
    if !matches!(args.mode.as_str(), "newest" | "queue" | "mixed") {
        return Err(invalid(format!(
            "--mode {:?}: newest, queue or mixed",
            args.mode
        )));
    }
    let stop = crate::stop_flag()?;
    let key = format!("demo-{}", std::process::id());
    let (w, h) = args.size;
    let layout = FrameLayout::new(PixelFormat::Nv12, w, h, 64)?;
    let options = PublisherOptions {
        slot_count: args.slots,
        ..Default::default()
    };
    let mut publisher = Publisher::create(&key, layout, options)?;
    println!(
        "cuframes demo: {w}x{h} NV12 at {} fps, {} subscriber processes ({}), {} s, stream {key:?}",
        if args.fps > 0.0 {
            format!("{}", args.fps)
        } else {
            "max".into()
        },
        args.subscribers,
        args.mode,
        args.seconds
    );
    let fleet = Fleet::spawn(&key, args.subscribers, &args.mode, &[])?;
    // Start publishing once everyone is connected, so all see frame 1.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while publisher.stats().active().count() < args.subscribers && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tty = stdout_is_tty();
    let pacer = Pacer::new(args.fps);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.seconds);
    let (mut n, mut stalls, mut last_print, mut last_n) = (0u64, 0u64, Instant::now(), 0u64);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        match publish_pattern(&mut publisher, &pacer, n) {
            Ok(_) => n += 1,
            Err(e) if e.code() == ErrorCode::Timeout => stalls += 1,
            Err(e) => return Err(e),
        }
        if last_print.elapsed() >= Duration::from_secs(1) && !args.quiet {
            let fps = (n - last_n) as f64 / last_print.elapsed().as_secs_f64();
            let reports = fleet.reports.lock().expect("reports");
            status_line(
                tty,
                &live_line(start.elapsed(), fps, &reports, publisher.stats()),
            );
            (last_print, last_n) = (Instant::now(), n);
        }
        pacer.wait(n);
    }
    let elapsed = start.elapsed();
    drop(publisher); // closes the stream: subscribers drain, report, exit
    if tty && !args.quiet {
        println!();
    }
    let failed = fleet.reports.clone();
    let failures = fleet.wait(Duration::from_secs(10));
    let reports = failed.lock().expect("reports").clone();
    summary(n, elapsed, stalls, &reports);
    let bad: u64 = reports.values().map(|r| r.bad).sum();
    if failures > 0 || bad > 0 || reports.len() < args.subscribers {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!(
                "{failures} subscriber processes failed, {bad} damaged frames, {} reports",
                reports.len()
            ),
        ));
    }
    Ok(())
}

fn live_line(
    t: Duration,
    fps: f64,
    reports: &BTreeMap<String, Report>,
    stats: cuframes::RingStats,
) -> String {
    let recv: Vec<String> = reports.values().map(|r| format!("{:.0}", r.fps)).collect();
    let p50 = reports.values().map(|r| r.p50_ns).max().unwrap_or(0);
    let p99 = reports.values().map(|r| r.p99_ns).max().unwrap_or(0);
    let dropped: u64 = reports.values().map(|r| r.dropped).sum();
    let bad: u64 = reports.values().map(|r| r.bad).sum();
    format!(
        "[{:>4.1}s] publish {fps:.1} fps | receive {} fps | latency p50 {} p99 {} | dropped {dropped} | damaged {bad} | occupancy {}/{}",
        t.as_secs_f64(),
        recv.join("/"),
        human_ns(p50),
        human_ns(p99),
        stats.occupancy,
        stats.slot_count
    )
}

fn summary(n: u64, elapsed: Duration, stalls: u64, reports: &BTreeMap<String, Report>) {
    println!(
        "published {n} frames in {:.1} s ({:.1} fps), {stalls} backpressure stalls",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{:<16} {:>8} {:>10} {:>10} {:>8} {:>8}",
        "subscriber", "frames", "p50", "p99", "dropped", "damaged"
    );
    for (name, r) in reports {
        println!(
            "{:<16} {:>8} {:>10} {:>10} {:>8} {:>8}",
            name,
            r.frames,
            human_ns(r.p50_ns),
            human_ns(r.p99_ns),
            r.dropped,
            r.bad
        );
    }
}
