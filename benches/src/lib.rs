//! # cuframes-bench
//!
//! The end-to-end harness behind `cuframes bench`: the same workload moved
//! from one publisher process to N subscriber processes through cuframes,
//! iceoryx2, a unix socket, Python shared memory and Python cuframes, with
//! handoff latency, frames/s, CPU per frame and resident memory measured
//! in every process; and, where there is a CUDA device, frames in GPU
//! memory through cuframes-cuda and `torch.multiprocessing`; and encoded
//! packet streams (packets/s, handoff latency and join time against the GOP)
//! through cuframes and unix sockets ([`packets`]). The criterion
//! micro-benchmarks are in `benches/`.
//!
//! Children are the calling binary re-executed with the spec of their
//! role ([`Options::child_prefix`] + spec), or `python3 -c` scripts.
#![deny(missing_docs)]

pub mod floor;
pub mod gpu;
pub mod memory;
pub mod output;
pub mod packets;
pub mod peers;
pub mod proto;
pub mod python;
pub mod reference;
pub mod spec;
pub mod work;

pub use output::{Figures, Row};
pub use peers::child_main;
pub use spec::{Case, ChildSpec, Mode, PacketShape, Peer, Phases, Wake, Work, Workload};

use proto::parse_kv;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How big a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Smallest: 1 subscriber, 4 KiB, short phases (tests).
    Smoke,
    /// 1 subscriber, 1080p and 4 KiB, every peer.
    Quick,
    /// Every workload, 1/4/8 subscribers.
    Full,
}

/// Which rows a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Video frames (host and GPU peers).
    Frames,
    /// Encoded packet streams: packets/s, latency and join time.
    Packets,
    /// Both.
    All,
}

impl Rows {
    /// What a run of `size` has unless told: everything in a full run,
    /// frames only in the quick and smoke sets (packets there with
    /// [`Rows::Packets`]).
    pub fn default_for(size: Size) -> Self {
        match size {
            Size::Full => Rows::All,
            _ => Rows::Frames,
        }
    }
}

/// What to run and where to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// How big a run.
    pub size: Size,
    /// Where the CSV and SVG go.
    pub out: PathBuf,
    /// The program to re-execute for Rust children.
    pub exe: PathBuf,
    /// Arguments before the child spec (`["bench", "--child"]`).
    pub child_prefix: Vec<String>,
    /// Only these peers (all when empty).
    pub peers: Vec<Peer>,
    /// Frame rows, packet rows or both.
    pub rows: Rows,
    /// A directory on a tmpfs mounted with `huge=` (transparent huge
    /// pages): the memory references measure a ring there too.
    pub huge_dir: Option<PathBuf>,
}

/// Where the results went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every row, reference rows first.
    pub rows: Vec<Row>,
    /// The CSV file.
    pub csv: PathBuf,
    /// The SVG file.
    pub svg: PathBuf,
    /// The table as printed.
    pub table: String,
}

fn phases(size: Size, w: Workload, work: Work) -> Phases {
    let (latency_frames, latency_interval_us, throughput_ms) = match (size, w.name) {
        (Size::Smoke, _) => (200, 500, 250),
        (Size::Quick, "4KiB") => (1000, 200, 700),
        (Size::Quick, _) => (150, 4000, 700),
        (Size::Full, "4KiB") => (2000, 200, 2000),
        (Size::Full, "1080p") => (300, 4000, 2000),
        (Size::Full, _) => (150, 12000, 2000),
    };
    let mut p = Phases {
        latency_frames,
        latency_interval_us,
        throughput_ms,
        throughput_interval_us: 0,
    };
    if work != Work::Handoff && size != Size::Smoke {
        // A consumer is busy for milliseconds a frame: fewer, sparser
        // latency frames, so that each finds it idle.
        p.latency_frames = 20;
        p.latency_interval_us = if w.name == "4K" { 100_000 } else { 30_000 };
    }
    p
}

/// The real-time rows' frame rate: 4K at 60 fps, a camera that never
/// waits.
pub const REALTIME_FPS: u64 = 60;

/// The real-time rows: a publisher at [`REALTIME_FPS`] for a few seconds,
/// subscribers newest-only, each checksumming every byte; passed if no
/// subscriber missed a frame.
fn realtime_phases(size: Size) -> Phases {
    Phases {
        latency_frames: 20,
        latency_interval_us: 100_000,
        throughput_ms: if size == Size::Full { 5000 } else { 2000 },
        throughput_interval_us: 1_000_000 / REALTIME_FPS,
    }
}

/// A real-time row's verdict: every subscriber took every frame sent, and
/// the publisher kept its rate, for a camera does not wait (a lossless
/// peer that holds it back delivers every frame, late).
fn realtime_verdict(lost: u64, fewest: u64, sent: u64, pub_fps: f64) -> &'static str {
    let kept_pace = pub_fps >= 0.97 * REALTIME_FPS as f64;
    if lost == 0 && fewest >= sent && sent > 0 && kept_pace {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Whether `case` is a real-time row.
pub fn is_realtime(case: &Case) -> bool {
    case.phases.throughput_interval_us > 0
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine in one line: cores and CPU model.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} cores, {model}", cores())
}

/// The cases of a run, in table order, each either to run or skipped
/// with a reason: frames (the GPU peers, after the host ones, move 1080p
/// frames, and 4K in a full run, to one subscriber), then packets.
pub fn plan(size: Size, rows: Rows) -> Vec<(Case, Option<String>)> {
    let mut out = Vec::new();
    if rows != Rows::Packets {
        out.extend(frame_plan(size));
    }
    if rows != Rows::Frames {
        out.extend(packets::plan(size));
    }
    out
}

fn frame_plan(size: Size) -> Vec<(Case, Option<String>)> {
    let (workloads, subs): (&[Workload], &[usize]) = match size {
        Size::Smoke => (&[Workload::SMALL], &[1]),
        Size::Quick => (&[Workload::HD, Workload::SMALL], &[1]),
        Size::Full => (&[Workload::SMALL, Workload::HD, Workload::UHD], &[1, 4, 8]),
    };
    let gpu_workloads: &[Workload] = match size {
        Size::Full => &[Workload::HD, Workload::UHD],
        _ => &[Workload::HD],
    };
    let host_peers = [
        Peer::Cuframes,
        Peer::Iceoryx2,
        Peer::UnixSocket,
        Peer::PythonShm,
        Peer::PythonCuframes,
    ];
    let gpu_peers = [Peer::CuframesCuda, Peer::TorchMp];
    // Consumer rows: the Rust subscribers of the zero-copy peers and the
    // copy baseline, each doing real work on every frame it takes.
    let consumer_peers = [Peer::Cuframes, Peer::Iceoryx2, Peer::UnixSocket];
    let (consumer_workloads, consumer_subs, works): (&[Workload], &[usize], &[Work]) = match size {
        Size::Smoke => (&[Workload::SMALL], &[1], &[Work::Checksum]),
        Size::Quick => (&[Workload::HD], &[1], &[Work::Checksum, Work::Rgb]),
        Size::Full => (
            &[Workload::HD, Workload::UHD],
            &[1, 4, 8],
            &[Work::Checksum, Work::Rgb],
        ),
    };
    let cores = cores();
    let mut out = Vec::new();
    for (workloads, subs, peers) in [
        (workloads, subs, &host_peers[..]),
        (gpu_workloads, &[1][..], &gpu_peers[..]),
    ] {
        add_cases(size, cores, workloads, subs, peers, Work::Handoff, &mut out);
    }
    for &work in works {
        add_cases(
            size,
            cores,
            consumer_workloads,
            consumer_subs,
            &consumer_peers,
            work,
            &mut out,
        );
    }
    // The pass/fail rows: 4K at 60 fps to 8 checksumming subscribers (and
    // fewer in a full run, to show where a machine stops); the peers at 8.
    if size != Size::Smoke {
        let counts: &[usize] = if size == Size::Full {
            &[1, 2, 4, 8]
        } else {
            &[8]
        };
        let mut rows: Vec<(Peer, usize)> = counts.iter().map(|&n| (Peer::Cuframes, n)).collect();
        if size == Size::Full {
            rows.extend([(Peer::Iceoryx2, 8), (Peer::UnixSocket, 8)]);
        }
        for (peer, n) in rows {
            let mode = if peer == Peer::UnixSocket {
                Mode::Queue
            } else {
                Mode::Newest
            };
            out.push((
                Case {
                    peer,
                    wake: Wake::Block,
                    mode,
                    workload: Workload::UHD,
                    work: Work::Checksum,
                    subscribers: n,
                    phases: realtime_phases(size),
                },
                None,
            ));
        }
    }
    out
}

fn add_cases(
    size: Size,
    cores: usize,
    workloads: &[Workload],
    subs: &[usize],
    peers: &[Peer],
    work: Work,
    out: &mut Vec<(Case, Option<String>)>,
) {
    for &workload in workloads {
        for &n in subs {
            for &peer in peers {
                for &mode in peer.modes() {
                    for &wake in peer.wakes() {
                        // A consumer is busy with its frame, not waiting for
                        // the next one: its rows block.
                        if work != Work::Handoff && wake == Wake::Spin {
                            continue;
                        }
                        let case = Case {
                            peer,
                            wake,
                            mode,
                            workload,
                            work,
                            subscribers: n,
                            phases: phases(size, workload, work),
                        };
                        let skip = (wake == Wake::Spin && n + 1 > cores).then(|| {
                            format!(
                                "busy-poll needs a core for the publisher and each subscriber ({} processes, {cores} cores)",
                                n + 1
                            )
                        });
                        out.push((case, skip));
                    }
                }
            }
        }
    }
}

/// Why a peer cannot run here, if it cannot.
fn unavailable(peer: Peer) -> Option<String> {
    match peer {
        Peer::PythonShm => python::probe("import multiprocessing.shared_memory").err(),
        Peer::PythonCuframes => python::probe("import cuframes")
            .err()
            .map(|e| format!("`import cuframes` failed: {e}")),
        Peer::CuframesCuda => gpu::probe().err(),
        Peer::TorchMp => match gpu::probe() {
            Ok(g) if g.sim => Some(format!(
                "the CUDA device is the driver simulator ({}): torch needs a real GPU",
                g.name
            )),
            _ => python::probe(python::TORCH_PROBE)
                .err()
                .map(|e| format!("needs torch with CUDA (torch.cuda.is_available()): {e}")),
        },
        _ => None,
    }
}

fn skipped_row(case: &Case, reason: &str) -> Row {
    Row {
        peer: case.peer.name().into(),
        wake: case.wake.name().into(),
        mode: case.mode.name().into(),
        payload: case.workload.name.into(),
        work: case.work.name().into(),
        bytes: case.workload.bytes(),
        subscribers: case.subscribers,
        status: "skipped".into(),
        reason: reason.into(),
        figures: Figures::default(),
    }
}

/// Runs the benchmark: reference points, every case, then the table, CSV
/// and SVG. `progress` gets a line per case as it finishes.
pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Result<Outcome, String> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("create {}: {e}", opts.out.display()))?;
    // Streams go to a private directory, removed at the end (lock files
    // and the segments of a case that failed included), unless the caller
    // chose one.
    let private = std::env::var_os("CUFRAMES_SHM_DIR").is_none().then(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("cuframes-bench-{}", std::process::id()))
    });
    if let Some(dir) = &private {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let shm_dir = private
        .clone()
        .or_else(|| std::env::var_os("CUFRAMES_SHM_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let cases: Vec<_> = plan(opts.size, opts.rows)
        .into_iter()
        .enumerate()
        .filter(|(_, (c, _))| opts.peers.is_empty() || opts.peers.contains(&c.peer))
        .collect();
    let refs = references(opts, &cases, &shm_dir, &mut progress);
    let result = run_cases(opts, private.as_deref(), cases, refs, progress);
    if let Some(dir) = &private {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// What the rows are compared with, measured before them: the handoff
/// floors at each cadence the host rows publish at, and one core's read
/// bandwidth for each frame size the consumer rows read.
#[derive(Default)]
struct Refs {
    rows: Vec<Row>,
    /// `(kind, interval us, p50 ns)`.
    floors: Vec<(floor::Kind, u64, u64)>,
    /// `(workload name, GB/s)`.
    reads: Vec<(&'static str, f64)>,
}

/// Whether `case` is a handoff row of a host peer: one with a floor.
fn has_floor(case: &Case) -> bool {
    case.work == Work::Handoff && !case.peer.gpu() && case.workload.packets.is_none()
}

fn references(
    opts: &Options,
    cases: &[(usize, (Case, Option<String>))],
    shm_dir: &Path,
    progress: &mut impl FnMut(&str),
) -> Refs {
    let (copies, pings) = match opts.size {
        Size::Smoke => (10, 2_000),
        Size::Quick => (50, 20_000),
        Size::Full => (200, 100_000),
    };
    let mut refs = Refs::default();
    let mut measured = vec![
        reference::memcpy(Workload::HD.bytes(), copies, "1080p NV12 frame"),
        reference::memcpy(Workload::SMALL.bytes(), copies * 20, "4 KiB"),
    ];
    for (_, (case, _)) in cases {
        let w = case.workload;
        if case.work != Work::Handoff && !refs.reads.iter().any(|(n, _)| *n == w.name) {
            // Enough distinct frames to overflow the last-level cache.
            let frames = (96 << 20) / w.bytes() + 1;
            let r = reference::read(w.bytes(), frames.min(64), copies, w.name);
            refs.reads
                .push((w.name, reference::gbps(w.bytes(), r.p50_ns)));
            measured.push(r);
        }
    }
    // First touch and huge pages of a 4K ring, where frame rows run.
    if opts.size != Size::Smoke && cases.iter().any(|(_, (c, _))| has_floor(c)) {
        measured.extend(memory::probe(opts.huge_dir.as_deref()));
    }
    let child = |kind, interval_us: u64, rounds| {
        floor::measure(
            kind,
            Duration::from_micros(interval_us),
            rounds,
            &opts.exe,
            &opts.child_prefix,
            shm_dir,
        )
    };
    if cases.iter().any(|(_, (c, _))| has_floor(c)) {
        measured.push(child(floor::Kind::PingPong, 0, pings));
    }
    for (_, (case, skip)) in cases {
        let kind = floor::Kind::of(case.wake);
        let interval = case.phases.latency_interval_us;
        if !has_floor(case)
            || skip.is_some()
            || refs.floors.iter().any(|f| (f.0, f.1) == (kind, interval))
        {
            continue;
        }
        let r = child(kind, interval, case.phases.latency_frames as usize);
        refs.floors.push((kind, interval, r.p50_ns));
        measured.push(r);
    }
    for r in measured {
        progress(&format!(
            "reference: {} p50 {} ({})",
            r.name,
            output::human_ns(r.p50_ns),
            r.note
        ));
        refs.rows.push(Row::reference(&r));
    }
    refs
}

fn run_cases(
    opts: &Options,
    shm_dir: Option<&Path>,
    cases: Vec<(usize, (Case, Option<String>))>,
    refs: Refs,
    mut progress: impl FnMut(&str),
) -> Result<Outcome, String> {
    let mut rows = refs.rows;
    let mut missing: Vec<(Peer, Option<String>)> = Vec::new();
    let mut why_not = |peer: Peer| -> Option<String> {
        if let Some((_, r)) = missing.iter().find(|(p, _)| *p == peer) {
            return r.clone();
        }
        let r = unavailable(peer);
        missing.push((peer, r.clone()));
        r
    };
    for (i, (case, skip)) in cases {
        let mut row = match skip.or_else(|| why_not(case.peer)) {
            Some(reason) => skipped_row(&case, &reason),
            None => run_case(opts, shm_dir, &case, i),
        };
        if has_floor(&case) {
            let kind = floor::Kind::of(case.wake);
            row.figures.floor_ns = refs
                .floors
                .iter()
                .find(|f| (f.0, f.1) == (kind, case.phases.latency_interval_us))
                .map_or(0, |f| f.2);
        }
        if let Some((_, gbps)) = refs.reads.iter().find(|(n, _)| *n == case.workload.name) {
            if case.work != Work::Handoff {
                row.figures.read_ref_gbps = *gbps;
            }
        }
        progress(&format!(
            "{} {} {} {} {} x{}: {}",
            row.peer,
            row.wake,
            row.mode,
            row.payload,
            row.work,
            row.subscribers,
            match row.status.as_str() {
                "ok" if output::is_join(&row) => format!(
                    "join p50 {} max {} ({})",
                    output::human_ns(row.figures.p50_ns),
                    output::human_ns(row.figures.max_ns),
                    row.reason
                ),
                s @ ("ok" | output::SIM) => format!(
                    "{}p50 {} p99 {} {:.0} fps{}",
                    if s == output::SIM { "sim: " } else { "" },
                    output::human_ns(row.figures.p50_ns),
                    output::human_ns(row.figures.p99_ns),
                    row.figures.sub_fps,
                    if row.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", row.reason)
                    }
                ),
                s => format!("{s}: {}", row.reason),
            }
        ));
        rows.push(row);
    }
    let table = format!("{}\n{}", machine(), output::table(&rows));
    let csv = opts.out.join("bench.csv");
    let svg = opts.out.join("bench.svg");
    std::fs::write(&csv, output::csv(&rows))
        .map_err(|e| format!("write {}: {e}", csv.display()))?;
    output::svg(
        &rows,
        &svg,
        &format!("cuframes bench: latency vs frames/s ({})", machine()),
    )?;
    Ok(Outcome {
        rows,
        csv,
        svg,
        table,
    })
}

enum Msg {
    Line(String),
}

/// The children of one case and their output.
pub(crate) struct Run {
    shm_dir: Option<PathBuf>,
    children: Vec<(String, Child)>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Run {
    fn new(shm_dir: Option<&Path>) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            shm_dir: shm_dir.map(Path::to_owned),
            children: Vec::new(),
            tx,
            rx,
            stderr: Default::default(),
        }
    }

    pub(crate) fn spawn(&mut self, label: &str, mut cmd: Command) -> Result<(), String> {
        if let Some(dir) = &self.shm_dir {
            cmd.env("CUFRAMES_SHM_DIR", dir);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {label}: {e}"))?;
        let out = child.stdout.take().expect("piped stdout");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(Msg::Line(line)).is_err() {
                    return;
                }
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let store = self.stderr.clone();
        let who = label.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                let mut s = store.lock().expect("stderr lines");
                s.push(format!("{who}: {line}"));
                if s.len() > 20 {
                    s.remove(0);
                }
            }
        });
        self.children.push((label.to_owned(), child));
        Ok(())
    }

    /// Why the run failed: a child that exited badly and what it said.
    fn failure(&mut self) -> Option<String> {
        for (label, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                if !st.success() {
                    std::thread::sleep(Duration::from_millis(50));
                    let said = self.stderr.lock().expect("stderr lines");
                    let last = said
                        .iter()
                        .rev()
                        .find(|l| l.starts_with(label.as_str()))
                        .cloned()
                        .unwrap_or_else(|| format!("{label} exited with {st}"));
                    return Some(last);
                }
            }
        }
        None
    }

    /// Waits for a line that `want` accepts, failing early if a child dies.
    pub(crate) fn wait_line(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(&str) -> bool,
    ) -> Result<(), String> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Msg::Line(l)) => {
                    if std::env::var_os("CUFRAMES_BENCH_DEBUG").is_some() {
                        eprintln!("    | {l}");
                    }
                    if want(&l) {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => return Err(e.to_string()),
            }
            if let Some(f) = self.failure() {
                return Err(f);
            }
            if Instant::now() > deadline {
                return Err("timed out waiting for the processes".into());
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one case; a failure becomes a `failed` row with the reason. A
/// GPU row measured on the driver simulator has status
/// [`output::SIM`] (never `ok`) and says so in its reason.
pub fn run_case(opts: &Options, shm_dir: Option<&Path>, case: &Case, index: usize) -> Row {
    let mut row = skipped_row(case, "");
    match measure(opts, shm_dir, case, index) {
        Ok((f, note)) => {
            row.status = "ok".into();
            row.figures = f;
            row.reason = note;
            if case.peer.gpu() {
                if let Ok(g) = gpu::probe() {
                    let detail = [g.name.as_str(), row.reason.as_str()]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(", ");
                    row.reason = if g.sim {
                        row.status = output::SIM.into();
                        format!("{} ({detail})", gpu::SIM_NOTE)
                    } else {
                        detail
                    };
                }
            }
        }
        Err(e) => {
            row.status = "failed".into();
            row.reason = e;
        }
    }
    row
}

/// The figures of one case and a note (the export mode of a CUDA
/// publisher; the size mix and byte rate of a packet stream; the join
/// figures of a join case).
fn measure(
    opts: &Options,
    shm_dir: Option<&Path>,
    case: &Case,
    index: usize,
) -> Result<(Figures, String), String> {
    let key = format!("bench-{}-{index}", std::process::id());
    let rust_child = |role: &str, idx: usize| {
        let spec = ChildSpec {
            case: *case,
            key: key.clone(),
            role: role.into(),
            idx,
        };
        let mut c = Command::new(&opts.exe);
        c.args(&opts.child_prefix).arg(spec.encode());
        c
    };
    if case.workload.is_join() {
        return packets::measure_join(&mut Run::new(shm_dir), case, |role| rust_child(role, 0));
    }
    let p = &case.phases;
    // Start-up: two cold `import torch` and CUDA initialisations, one
    // after the other, can take tens of seconds on a fresh machine.
    let startup = if case.peer == Peer::TorchMp { 90 } else { 30 };
    let budget = Duration::from_secs(startup)
        + Duration::from_micros(p.latency_frames * p.latency_interval_us)
        + Duration::from_millis(p.throughput_ms) * 2;
    let deadline = Instant::now() + budget;
    let mut run = Run::new(shm_dir);
    let n = case.subscribers;
    if matches!(case.peer, Peer::PythonShm | Peer::TorchMp) {
        // One Python process that starts its subscribers itself.
        let args = [
            format!("bytes={}", case.workload.bytes()),
            format!("subs={n}"),
            format!("slots={}", spec::ring_slots(n)),
            format!("lat_frames={}", p.latency_frames),
            format!("lat_interval_us={}", p.latency_interval_us),
            format!("tput_ms={}", p.throughput_ms),
        ];
        let cmd = match case.peer {
            Peer::TorchMp => python::torch_mp_command(&args, &opts.out)?,
            _ => python::shm_command(&args),
        };
        run.spawn(case.peer.name(), cmd)?;
    } else {
        run.spawn("publisher", rust_child("pub", 0))?;
        run.wait_line(deadline, |l| l == "ready")?;
        for i in 0..n {
            let cmd = if case.peer == Peer::PythonCuframes {
                python::cuframes_command(&[
                    format!("key={key}"),
                    format!("idx={i}"),
                    format!("mode={}", case.mode.name()),
                ])
            } else {
                rust_child("sub", i)
            };
            run.spawn(&format!("subscriber {i}"), cmd)?;
        }
    }
    let mut publisher = None;
    let mut subs = Vec::new();
    run.wait_line(deadline, |l| {
        if let Some(rest) = l.strip_prefix("result ") {
            let kv = parse_kv(rest);
            match kv.get("role").map(String::as_str) {
                Some("pub") => publisher = Some(kv),
                Some("sub") => subs.push(kv),
                _ => {}
            }
        }
        publisher.is_some() && subs.len() == n
    })?;
    let publisher = publisher.expect("publisher result");
    let num = |kv: &std::collections::BTreeMap<String, String>, k: &str| -> f64 {
        kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let max = |k: &str| subs.iter().map(|s| num(s, k)).fold(0.0, f64::max) as u64;
    let mean = |k: &str| subs.iter().map(|s| num(s, k)).sum::<f64>() / n.max(1) as f64;
    let figures = Figures {
        p50_ns: max("p50"),
        p99_ns: max("p99"),
        p999_ns: max("p999"),
        max_ns: max("max"),
        samples: subs
            .iter()
            .map(|s| num(s, "samples") as u64)
            .min()
            .unwrap_or(0),
        pub_fps: num(&publisher, "fps"),
        sub_fps: mean("fps"),
        pub_cpu_ns: num(&publisher, "cpu_ns") as u64,
        sub_cpu_ns: mean("cpu_ns") as u64,
        sub_rss_kib: mean("rss_kib") as u64,
        sub_shmem_kib: mean("shmem_kib") as u64,
        lost: if case.mode == Mode::Queue || is_realtime(case) {
            subs.iter().map(|s| num(s, "lost") as u64).sum()
        } else {
            0
        },
        damaged: subs.iter().map(|s| num(s, "damaged") as u64).sum(),
        ..Default::default()
    };
    if figures.samples == 0 || figures.sub_fps <= 0.0 {
        return Err(format!(
            "no frames measured ({} latency samples, {:.0} frames/s)",
            figures.samples, figures.sub_fps
        ));
    }
    if figures.damaged > 0 {
        return Err(format!(
            "{} frames were not what their publisher wrote (checked by the subscribers' {} work)",
            figures.damaged,
            case.work.name()
        ));
    }
    if is_realtime(case) {
        let sent = num(&publisher, "frames") as u64;
        let fewest = subs
            .iter()
            .map(|s| num(s, "frames") as u64)
            .min()
            .unwrap_or(0);
        let verdict = realtime_verdict(figures.lost, fewest, sent, figures.pub_fps);
        let note = format!(
            "{verdict}: {n} subscribers at {REALTIME_FPS} fps, each checksumming every byte: {} frames sent at {:.1} fps, the fewest any took {fewest}, {} lost",
            sent, figures.pub_fps, figures.lost
        );
        return Ok((figures, note));
    }
    let note = match case.workload.packets {
        Some(shape) => packets::rate_note(shape, figures.sub_fps, mean("bytes"), mean("frames")),
        None => publisher
            .get("export")
            .map(|m| format!("export {m}"))
            .unwrap_or_default(),
    };
    Ok((figures, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_verdict_needs_every_frame_and_the_rate() {
        assert_eq!(realtime_verdict(0, 300, 300, 59.9), "PASS");
        assert_eq!(realtime_verdict(1, 300, 300, 59.9), "FAIL", "a gap");
        assert_eq!(
            realtime_verdict(0, 299, 300, 59.9),
            "FAIL",
            "the last frame missed"
        );
        assert_eq!(
            realtime_verdict(0, 300, 300, 32.3),
            "FAIL",
            "a publisher held back"
        );
        assert_eq!(realtime_verdict(0, 0, 0, 60.0), "FAIL", "nothing sent");
    }

    #[test]
    fn full_plan_has_consumer_and_realtime_rows() {
        let plan = plan(Size::Full, Rows::Frames);
        let realtime: Vec<_> = plan
            .iter()
            .map(|(c, _)| c)
            .filter(|c| is_realtime(c))
            .map(|c| (c.peer, c.subscribers))
            .collect();
        for n in [1, 2, 4, 8] {
            assert!(realtime.contains(&(Peer::Cuframes, n)), "{realtime:?}");
        }
        assert!(realtime.contains(&(Peer::UnixSocket, 8)));
        for work in [Work::Checksum, Work::Rgb] {
            for w in [Workload::HD, Workload::UHD] {
                for n in [1, 4, 8] {
                    assert!(plan.iter().any(|(c, _)| c.work == work
                        && c.workload == w
                        && c.subscribers == n
                        && c.peer == Peer::Iceoryx2
                        && !is_realtime(c)));
                }
            }
        }
        // A consumer is busy with its frame: its rows block.
        assert!(plan
            .iter()
            .all(|(c, _)| c.work == Work::Handoff || c.wake == Wake::Block));
        // The smallest set still has a checked consumer row.
        assert!(plan_has_sum(Size::Smoke));
    }

    fn plan_has_sum(size: Size) -> bool {
        plan(size, Rows::Frames)
            .iter()
            .any(|(c, _)| c.work == Work::Checksum && c.peer == Peer::Cuframes)
    }
}
