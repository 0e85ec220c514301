//! `gst-bench`: the same 1080p GStreamer pipeline through
//! `cuframessink`/`cuframessrc`, `shmsink`/`shmsrc` (upstream writing into
//! shmsink's area, and shmsink copying: `shm-copy`) and (GStreamer ≥ 1.24)
//! `unixfdsink`/`unixfdsrc`, side by side; and, per upstream element,
//! whether `cuframessink` got buffers written into the ring's slots (zero
//! copy) or copied them.
//!
//! One producer process, `videotestsrc is-live=true pattern=black !
//! video/x-raw,format=NV12,width=1920,height=1080,framerate=60/1 ! <sink>`,
//! and 1 or 4 consumer processes, `<src> ! fakesink`, at 60 fps and
//! unpaced (`is-live=false`: as fast as the slowest consumer takes
//! frames; lossless on every transport). A pad probe before the sink
//! writes `CLOCK_MONOTONIC` (ns) and a sequence number into the first 16
//! bytes of each frame; a probe after each consumer's source reads them:
//! latency = arrival − stamp, lost = sequence gaps. CPU per frame is each
//! process's `CLOCK_PROCESS_CPUTIME_ID` over the measured window divided by
//! the frames it moved. Every process discards a warm-up (connections,
//! the first frames) and measures a window of the same length.
//!
//! ```sh
//! scripts/bench-gstreamer.sh            # release build, full run (~70 s on 2 cores)
//! scripts/bench-gstreamer.sh --quick    # the smoke set (< 30 s)
//! ```
//!
//! Options: `--quick`, `--out DIR` (writes `gst-bench.csv` and
//! `gst-zero-copy.csv`), `--transports cuframes,shm,shm-copy,unixfd`,
//! `--no-zero-copy`. Results and how to read them: docs/gstreamer.md,
//! "Performance". The plugin is linked in (registered statically); the
//! other elements come from the installed GStreamer.

use gst::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const FRAME_BYTES: usize = (WIDTH * HEIGHT * 3 / 2) as usize;
const CAPS: &str = "video/x-raw,format=NV12,width=1920,height=1080,framerate=60/1";
/// Slots of the cuframes ring for `consumers` readers: each
/// `cuframessrc` may hold 3 frames (`max-held`), plus the writer's and the
/// newest (8 at least, the sink's default).
fn slots(consumers: usize) -> usize {
    (3 * consumers + 2).max(8)
}
/// `videotestsrc pattern=black` paints a frame in ~0.3 ms; the default
/// SMPTE bars cost ~3 ms a frame, which would hide the transport's share
/// of the producer's CPU.
const PATTERN: &str = "black";

// ---------------------------------------------------------------------------
// Clocks: CLOCK_MONOTONIC (the same in every process) and this process's CPU
// time. Declared here rather than through a crate: the plugin crate does
// not depend on libc.

#[repr(C)]
struct Timespec {
    sec: std::os::raw::c_long,
    nsec: std::os::raw::c_long,
}

extern "C" {
    fn clock_gettime(clock: std::os::raw::c_int, ts: *mut Timespec) -> std::os::raw::c_int;
}

const CLOCK_MONOTONIC: std::os::raw::c_int = 1;
const CLOCK_PROCESS_CPUTIME_ID: std::os::raw::c_int = 2;

fn clock_ns(clock: std::os::raw::c_int) -> u64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on Linux.
    let rc = unsafe { clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    ts.sec as u64 * 1_000_000_000 + ts.nsec as u64
}

fn mono_ns() -> u64 {
    clock_ns(CLOCK_MONOTONIC)
}

fn cpu_ns() -> u64 {
    clock_ns(CLOCK_PROCESS_CPUTIME_ID)
}

// ---------------------------------------------------------------------------
// Transports and rates.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Cuframes,
    /// shmsink offering its allocator: upstream writes into the area.
    Shm,
    /// shmsink behind `identity drop-allocation=true`: it copies each frame
    /// into the area, and waits for room when the area is full.
    ShmCopy,
    UnixFd,
}

impl Transport {
    const ALL: [Transport; 4] = [
        Transport::Cuframes,
        Transport::Shm,
        Transport::ShmCopy,
        Transport::UnixFd,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::Cuframes => "cuframes",
            Transport::Shm => "shm",
            Transport::ShmCopy => "shm-copy",
            Transport::UnixFd => "unixfd",
        }
    }

    fn by_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    fn elements(self) -> [&'static str; 2] {
        match self {
            Transport::Cuframes => ["cuframessink", "cuframessrc"],
            Transport::Shm | Transport::ShmCopy => ["shmsink", "shmsrc"],
            Transport::UnixFd => ["unixfdsink", "unixfdsrc"],
        }
    }

    /// The producer's sink, named `sink`. Every sink publishes as soon as
    /// it gets a buffer (`sync=false`) and keeps no last sample. The shm
    /// area holds twice as many frames as the cuframes ring has slots.
    fn sink(self, endpoint: &str, consumers: usize) -> String {
        let slots = slots(consumers);
        let shmsink = format!(
            "shmsink name=sink socket-path={endpoint} shm-size={} wait-for-connection=true sync=false enable-last-sample=false",
            2 * slots * FRAME_BYTES + (1 << 20)
        );
        match self {
            Transport::Cuframes => format!(
                "cuframessink name=sink key={endpoint} slots={slots} policy=block wait-subscribers={consumers} sync=false"
            ),
            Transport::Shm => shmsink,
            Transport::ShmCopy => format!("identity drop-allocation=true ! {shmsink}"),
            Transport::UnixFd => format!(
                "unixfdsink name=sink socket-path={endpoint} sync=false enable-last-sample=false"
            ),
        }
    }

    /// A consumer pipeline; its source is named `src`.
    fn consumer(self, endpoint: &str, idx: usize) -> String {
        let fakesink = "fakesink sync=false enable-last-sample=false";
        match self {
            Transport::Cuframes => format!(
                "cuframessrc name=src key={endpoint} subscriber-name=bench{idx} mode=queue timeout=30000 ! {fakesink}"
            ),
            Transport::Shm | Transport::ShmCopy => format!(
                "shmsrc name=src socket-path={endpoint} is-live=true ! {CAPS} ! {fakesink}"
            ),
            Transport::UnixFd => format!("unixfdsrc name=src socket-path={endpoint} ! {fakesink}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Fps60,
    Unpaced,
}

impl Rate {
    fn name(self) -> &'static str {
        match self {
            Rate::Fps60 => "60fps",
            Rate::Unpaced => "max",
        }
    }
}

/// Warm-up and measured window of one case, milliseconds.
fn phases(quick: bool, rate: Rate) -> (u64, u64) {
    match (quick, rate) {
        (true, _) => (250, 800),
        (false, Rate::Fps60) => (1000, 5000),
        (false, Rate::Unpaced) => (1000, 3000),
    }
}

// ---------------------------------------------------------------------------
// What a process measures over its window.

#[derive(Default)]
struct Meter {
    warmup_ns: u64,
    window_ns: u64,
    first: Option<u64>,
    /// (monotonic, cpu, frames) at the start of the window.
    start: Option<(u64, u64, u64)>,
    /// The same at its end.
    end: Option<(u64, u64, u64)>,
    frames: u64,
    latencies: Vec<u64>,
    lost: u64,
    last_seq: Option<u64>,
    /// The allocator of the first buffer's memory (who allocated it).
    allocator: String,
    done: Option<mpsc::Sender<()>>,
}

impl Meter {
    fn new(warmup_ms: u64, window_ms: u64, done: mpsc::Sender<()>) -> Self {
        Self {
            warmup_ns: warmup_ms * 1_000_000,
            window_ns: window_ms * 1_000_000,
            done: Some(done),
            ..Default::default()
        }
    }

    /// Counts a frame at `now`; whether it falls in the window.
    fn tick(&mut self, now: u64) -> bool {
        self.frames += 1;
        let first = *self.first.get_or_insert(now);
        if self.end.is_some() {
            return false;
        }
        match self.start {
            None if now >= first + self.warmup_ns => {
                self.start = Some((now, cpu_ns(), self.frames - 1));
                true
            }
            None => false,
            Some((t0, _, _)) if now >= t0 + self.window_ns => {
                self.end = Some((now, cpu_ns(), self.frames - 1));
                if let Some(tx) = self.done.take() {
                    let _ = tx.send(());
                }
                false
            }
            Some(_) => true,
        }
    }

    fn result(&mut self, role: &str) -> String {
        let (Some((t0, c0, f0)), Some((t1, c1, f1))) = (self.start, self.end) else {
            return format!("result role={role} frames=0");
        };
        let frames = f1 - f0;
        let secs = (t1 - t0) as f64 / 1e9;
        self.latencies.sort_unstable();
        let q = |p: f64| -> u64 {
            if self.latencies.is_empty() {
                return 0;
            }
            let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
            self.latencies[i]
        };
        format!(
            "result role={role} frames={frames} fps={:.2} cpu_per_frame_ns={} samples={} p50={} p99={} max={} lost={} allocator={}",
            frames as f64 / secs,
            (c1 - c0) / frames.max(1),
            self.latencies.len(),
            q(0.5),
            q(0.99),
            self.latencies.last().copied().unwrap_or(0),
            self.lost,
            if self.allocator.is_empty() { "-" } else { &self.allocator }
        )
    }
}

fn allocator_name(buffer: &gst::BufferRef) -> String {
    if buffer.n_memory() == 0 {
        return "none".into();
    }
    buffer
        .peek_memory(0)
        .allocator()
        .map_or_else(|| "none".into(), |a| a.type_().name().to_string())
}

fn launch(desc: &str) -> Result<gst::Pipeline, String> {
    gst::parse::launch(desc)
        .map_err(|e| format!("{desc}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_string())
}

/// No frame for this long once frames flowed: the pipeline stalled.
const STALL: Duration = Duration::from_secs(3);

/// Waits for `done` while watching the bus; an error message, no first
/// frame within `limit` or a stall fails.
fn wait_done(
    pipeline: &gst::Pipeline,
    done: &mpsc::Receiver<()>,
    limit: Duration,
    meter: &Mutex<Meter>,
) -> Result<(), String> {
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let deadline = Instant::now() + limit;
    let (mut seen, mut moved) = (0, Instant::now());
    loop {
        if done.try_recv().is_ok() {
            return Ok(());
        }
        let frames = meter.lock().unwrap().frames;
        if frames != seen {
            (seen, moved) = (frames, Instant::now());
        } else if frames > 0 && moved.elapsed() > STALL {
            return Err(format!(
                "stalled: no frame for {STALL:?} after {frames} frames"
            ));
        }
        if let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(20),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        ) {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    return Err(format!("{} ({:?})", e.error(), e.debug()))
                }
                _ => return Err("end of stream before the window ended".into()),
            }
        }
        if Instant::now() > deadline {
            return Err("timed out before the measured window ended".into());
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes.

fn kv(args: &[String]) -> BTreeMap<String, String> {
    args.iter()
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn child(role: &str, args: &[String]) -> Result<(), String> {
    let kv = kv(args);
    let get = |k: &str| kv.get(k).cloned().ok_or(format!("missing {k}="));
    let num = |k: &str| -> Result<u64, String> { get(k)?.parse().map_err(|e| format!("{k}: {e}")) };
    let transport = Transport::by_name(&get("transport")?).ok_or("unknown transport")?;
    let endpoint = get("endpoint")?;
    let (warmup, window) = (num("warmup_ms")?, num("window_ms")?);
    let (tx, rx) = mpsc::channel();
    let meter = Arc::new(Mutex::new(Meter::new(warmup, window, tx)));
    let limit = Duration::from_millis(warmup + window) + Duration::from_secs(30);
    let m = meter.clone();
    if role == "producer" {
        let live = num("paced")? == 1;
        let pipeline = launch(&format!(
            "videotestsrc is-live={live} pattern={PATTERN} ! {CAPS} ! {}",
            transport.sink(&endpoint, num("consumers")? as usize)
        ))?;
        let sink = pipeline.by_name("sink").expect("sink");
        sink.static_pad("sink").expect("sink pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(gst::PadProbeData::Buffer(ref mut buffer)) = info.data {
                    let buffer = buffer.make_mut();
                    let mut m = m.lock().unwrap();
                    if m.allocator.is_empty() {
                        m.allocator = allocator_name(buffer);
                    }
                    if let Ok(mut map) = buffer.map_writable() {
                        let now = mono_ns();
                        let seq = m.frames + 1;
                        map[..8].copy_from_slice(&now.to_le_bytes());
                        map[8..16].copy_from_slice(&seq.to_le_bytes());
                        m.tick(now);
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("producer to PLAYING: {e}"))?;
        println!("ready");
        let outcome = wait_done(&pipeline, &rx, limit, &meter);
        let mut line = meter.lock().unwrap().result("producer");
        if transport == Transport::Cuframes {
            let _ = write!(
                line,
                " zero_copy={} copied={}",
                sink.property::<u64>("zero-copy-buffers"),
                sink.property::<u64>("copied-buffers")
            );
        }
        outcome?;
        println!("{line}");
        // Keep publishing until the parent has every consumer's result.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = pipeline.set_state(gst::State::Null);
    } else {
        let idx = num("idx")? as usize;
        let pipeline = launch(&transport.consumer(&endpoint, idx))?;
        let src = pipeline.by_name("src").expect("src");
        src.static_pad("src").expect("src pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(gst::PadProbeData::Buffer(ref buffer)) = info.data {
                    let now = mono_ns();
                    let mut m = m.lock().unwrap();
                    if m.allocator.is_empty() {
                        m.allocator = allocator_name(buffer);
                    }
                    if let Ok(map) = buffer.map_readable() {
                        let word = |i: usize| {
                            u64::from_le_bytes(map[i * 8..i * 8 + 8].try_into().unwrap())
                        };
                        let (stamp, seq) = (word(0), word(1));
                        if m.tick(now) {
                            m.latencies.push(now.saturating_sub(stamp));
                            if let Some(last) = m.last_seq {
                                m.lost += seq.saturating_sub(last + 1);
                            }
                        }
                        m.last_seq = Some(seq);
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("consumer to PLAYING: {e}"))?;
        wait_done(&pipeline, &rx, limit, &meter)?;
        let line = meter.lock().unwrap().result("consumer");
        println!("{line} idx={idx}");
        // Stay connected until every process has its result: shmsink
        // 1.22, when one client leaves, may drop another that is reading
        // ("One client has read error ... errno: 11").
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = pipeline.set_state(gst::State::Null);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent: cases, processes, the table.

struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

struct Procs {
    procs: Vec<Proc>,
    tx: mpsc::Sender<(usize, String)>,
    rx: mpsc::Receiver<(usize, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Procs {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            procs: Vec::new(),
            tx,
            rx,
            stderr: Default::default(),
        }
    }

    fn spawn(
        &mut self,
        label: &str,
        role: &str,
        args: &[String],
        env: &Path,
    ) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--child")
            .arg(role)
            .args(args)
            .env("CUFRAMES_SHM_DIR", env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {label}: {e}"))?;
        let i = self.procs.len();
        let out = child.stdout.take().expect("stdout");
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, l)).is_err() {
                    return;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let store = self.stderr.clone();
        let who = label.to_owned();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = store.lock().unwrap();
                s.push(format!("{who}: {l}"));
                if s.len() > 30 {
                    s.remove(0);
                }
            }
        });
        let stdin = child.stdin.take();
        self.procs.push(Proc {
            label: label.into(),
            child,
            stdin,
        });
        Ok(())
    }

    /// Why children failed, if one exited badly: every child that did by
    /// then, and the last line each wrote (one failure often ends the
    /// others: the cause is among them).
    fn failure(&mut self) -> Option<String> {
        if !self
            .procs
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(Some(st)) if !st.success()))
        {
            return None;
        }
        // Let the others notice and the stderr readers catch up.
        std::thread::sleep(Duration::from_millis(500));
        let said = self.stderr.lock().unwrap();
        let mut why = Vec::new();
        for p in &mut self.procs {
            if let Ok(Some(st)) = p.child.try_wait() {
                if !st.success() {
                    let last = said
                        .iter()
                        .rev()
                        .find(|l| l.starts_with(&format!("{}: ", p.label)))
                        .map_or("(nothing on stderr)", |l| &l[p.label.len() + 2..]);
                    why.push(format!("{} ({st}): {last}", p.label));
                }
            }
        }
        Some(why.join("; "))
    }

    /// Lines from the children until `want` says enough.
    fn wait(
        &mut self,
        deadline: Instant,
        mut want: impl FnMut(usize, &str) -> bool,
    ) -> Result<(), String> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, l)) => {
                    if want(i, &l) {
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

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stdin.take();
        }
        for p in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

#[derive(Default, Clone)]
struct Row {
    transport: String,
    rate: String,
    consumers: usize,
    status: String,
    reason: String,
    pub_fps: f64,
    sub_fps: f64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
    samples: u64,
    pub_cpu_ns: u64,
    sub_cpu_ns: u64,
    lost: u64,
    note: String,
}

fn num(kv: &BTreeMap<String, String>, k: &str) -> f64 {
    kv.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

fn measure(
    t: Transport,
    rate: Rate,
    consumers: usize,
    quick: bool,
    dir: &Path,
    index: usize,
) -> Result<Row, String> {
    let (warmup, window) = phases(quick, rate);
    let endpoint = match t {
        Transport::Cuframes => format!("gstbench-{}-{index}", std::process::id()),
        _ => dir
            .join(format!("{}-{index}.sock", t.name()))
            .display()
            .to_string(),
    };
    let common = [
        format!("transport={}", t.name()),
        format!("endpoint={endpoint}"),
        format!("warmup_ms={warmup}"),
        format!("window_ms={window}"),
    ];
    let deadline =
        Instant::now() + Duration::from_millis(warmup + window) + Duration::from_secs(40);
    let mut procs = Procs::new();
    let mut args = common.to_vec();
    args.push(format!("paced={}", u8::from(rate == Rate::Fps60)));
    args.push(format!("consumers={consumers}"));
    procs.spawn("producer", "producer", &args, dir)?;
    procs.wait(deadline, |_, l| l == "ready")?;
    if t != Transport::Cuframes {
        // Their sources need the socket to exist.
        let sock = Path::new(&endpoint);
        while !sock.exists() {
            if Instant::now() > deadline {
                return Err(format!("{} never appeared", sock.display()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for i in 0..consumers {
        let mut args = common.to_vec();
        args.push(format!("idx={i}"));
        procs.spawn(&format!("consumer {i}"), "consumer", &args, dir)?;
    }
    let mut producer = None;
    let mut subs = Vec::new();
    procs.wait(deadline, |_, l| {
        if let Some(rest) = l.strip_prefix("result ") {
            let kv = kv(&rest.split(' ').map(str::to_owned).collect::<Vec<_>>());
            if kv.get("role").map(String::as_str) == Some("producer") {
                producer = Some(kv);
            } else {
                subs.push(kv);
            }
        }
        producer.is_some() && subs.len() == consumers
    })?;
    // Every process measured its window: stop them all together.
    drop(procs);
    let producer = producer.expect("producer result");
    let max = |k: &str| subs.iter().map(|s| num(s, k)).fold(0.0, f64::max) as u64;
    let mean = |k: &str| subs.iter().map(|s| num(s, k)).sum::<f64>() / consumers as f64;
    let allocator = producer.get("allocator").map_or("-", String::as_str);
    let note = match t {
        Transport::Cuframes => format!(
            "cuframessink: {} zero copy, {} copied",
            producer["zero_copy"], producer["copied"]
        ),
        Transport::Shm | Transport::ShmCopy if allocator == "GstShmSinkAllocator" => {
            "upstream wrote into the shm area".into()
        }
        Transport::Shm | Transport::ShmCopy => format!("shmsink copied ({allocator} buffers)"),
        Transport::UnixFd => format!("upstream memory: {allocator}"),
    };
    let row = Row {
        transport: t.name().into(),
        rate: rate.name().into(),
        consumers,
        status: "ok".into(),
        reason: String::new(),
        pub_fps: num(&producer, "fps"),
        sub_fps: mean("fps"),
        p50_ns: max("p50"),
        p99_ns: max("p99"),
        max_ns: max("max"),
        samples: subs
            .iter()
            .map(|s| num(s, "samples") as u64)
            .min()
            .unwrap_or(0),
        pub_cpu_ns: num(&producer, "cpu_per_frame_ns") as u64,
        sub_cpu_ns: mean("cpu_per_frame_ns") as u64,
        lost: subs.iter().map(|s| num(s, "lost") as u64).sum(),
        note,
    };
    if row.samples == 0 || row.sub_fps <= 0.0 || row.pub_fps <= 0.0 {
        return Err(format!(
            "no frames measured ({} samples, {:.1} frames/s)",
            row.samples, row.sub_fps
        ));
    }
    Ok(row)
}

/// A failure's reason, with what is known about it.
fn explain(t: Transport, e: String) -> String {
    if t == Transport::Shm && e.contains("stalled") {
        // Seen with GST_DEBUG=shmsink:6: the area fills (shmsink takes
        // frames without waiting for readers), upstream's buffer pool
        // keeps the area's blocks it got back, the next buffer comes from
        // system memory, and shmsink waits forever for room to copy it.
        format!(
            "{e} (shmsink has no back-pressure until its area is full; then the blocks sit in upstream's buffer pool and shmsink waits for room that never comes: see shm-copy)"
        )
    } else {
        e
    }
}

/// Why a transport cannot run here, asked of `gst-inspect-1.0` (the
/// registry GStreamer's own tools see; cuframes' elements are linked in).
fn unavailable(t: Transport) -> Option<String> {
    if t == Transport::Cuframes {
        return None;
    }
    for e in t.elements() {
        match Command::new("gst-inspect-1.0")
            .args(["--exists", e])
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(_) => {
                return Some(format!(
                    "`gst-inspect-1.0 --exists {e}`: not found in GStreamer {}{}",
                    gst::version_string().trim_start_matches("GStreamer "),
                    if t == Transport::UnixFd {
                        " (unixfdsink/unixfdsrc are in gst-plugins-bad 1.24 and later)"
                    } else {
                        ""
                    }
                ))
            }
            Err(err) => {
                // No gst-inspect-1.0: ask the registry this process loaded.
                if gst::ElementFactory::find(e).is_none() {
                    return Some(format!(
                        "element {e} not found (gst-inspect-1.0 cannot run: {err})"
                    ));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Zero copy per upstream element: cuframessink's counters.

struct ZeroCopyRow {
    upstream: String,
    status: String,
    reason: String,
    buffers: u64,
    zero_copy: u64,
    copied: u64,
    dropped: u64,
}

fn run_to_eos(desc: &str) -> Result<gst::Pipeline, String> {
    let pipeline = launch(desc)?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{desc}: to PLAYING: {e}"))?;
    let bus = pipeline.bus().expect("bus");
    let mut result = Err(format!("{desc}: no EOS within 120 s"));
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = Ok(());
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    result.map(|()| pipeline)
}

fn zero_copy_rows(quick: bool, dir: &Path) -> Vec<ZeroCopyRow> {
    let n = if quick { 20 } else { 120 };
    let nv12 = CAPS;
    let i420 = "video/x-raw,format=I420,width=1920,height=1080,framerate=60/1";
    let has = |e: &str| gst::ElementFactory::find(e).is_some();
    let h264 = dir.join("zero-copy.h264");
    // An H.264 file for the decoders, if an encoder is installed.
    let encoded: Result<(), String> = if has("openh264enc") || has("x264enc") {
        let enc = if has("x264enc") {
            "x264enc speed-preset=ultrafast key-int-max=30"
        } else {
            "openh264enc gop-size=30"
        };
        run_to_eos(&format!(
            "videotestsrc num-buffers={n} pattern=ball ! {i420} ! {enc} ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au ! filesink location={}",
            h264.display()
        ))
        .map(drop)
    } else {
        Err("no H.264 encoder (x264enc, openh264enc) to make the decoders' input".into())
    };
    let mut cases: Vec<(String, String, Vec<&str>)> = vec![
        (
            "videotestsrc (NV12)".into(),
            format!("videotestsrc num-buffers={n} ! {nv12}"),
            vec!["videotestsrc"],
        ),
        (
            "videotestsrc (I420) ! videoconvert".into(),
            format!("videotestsrc num-buffers={n} ! {i420} ! videoconvert ! {nv12}"),
            vec!["videotestsrc", "videoconvert"],
        ),
    ];
    for dec in ["avdec_h264", "openh264dec"] {
        cases.push((
            format!("filesrc ! h264parse ! {dec} ! videoconvert"),
            // The byte stream carries no frame rate: no framerate in the caps.
            format!(
                "filesrc location={} ! h264parse ! {dec} ! videoconvert ! video/x-raw,format=NV12",
                h264.display()
            ),
            vec!["h264parse", dec, "videoconvert"],
        ));
    }
    cases.push((
        "videotestsrc ! queue".into(),
        format!("videotestsrc num-buffers={n} ! {nv12} ! queue"),
        vec!["videotestsrc", "queue"],
    ));
    let mut rows = Vec::new();
    for (i, (upstream, desc, needs)) in cases.into_iter().enumerate() {
        let mut row = ZeroCopyRow {
            upstream,
            status: "ok".into(),
            reason: String::new(),
            buffers: 0,
            zero_copy: 0,
            copied: 0,
            dropped: 0,
        };
        let missing: Vec<_> = needs.iter().filter(|e| !has(e)).collect();
        let skip = if !missing.is_empty() {
            Some(format!("not installed: {missing:?}"))
        } else if desc.starts_with("filesrc") {
            encoded.as_ref().err().cloned()
        } else {
            None
        };
        if let Some(why) = skip {
            row.status = "skipped".into();
            row.reason = why;
            rows.push(row);
            continue;
        }
        let key = format!("gstbench-zc-{}-{i}", std::process::id());
        match run_to_eos(&format!(
            "{desc} ! cuframessink name=sink key={key} sync=false"
        )) {
            Ok(p) => {
                let sink = p.by_name("sink").expect("sink");
                row.zero_copy = sink.property("zero-copy-buffers");
                row.copied = sink.property("copied-buffers");
                row.dropped = sink.property("dropped-buffers");
                row.buffers = row.zero_copy + row.copied + row.dropped;
            }
            Err(e) => {
                row.status = "failed".into();
                row.reason = e;
            }
        }
        rows.push(row);
    }
    let _ = std::fs::remove_file(&h264);
    rows
}

// ---------------------------------------------------------------------------
// Output.

fn human_ns(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n < 10_000 => format!("{:.2}us", n as f64 / 1e3),
        n if n < 1_000_000 => format!("{:.0}us", n as f64 / 1e3),
        n => format!("{:.2}ms", n as f64 / 1e6),
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<9} {:<6} {:>4} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>5}  note",
        "transport",
        "rate",
        "cons",
        "pub fps",
        "sub fps",
        "lat p50",
        "lat p99",
        "lat max",
        "pub cpu/f",
        "sub cpu/f",
        "lost"
    );
    for r in rows {
        if r.status != "ok" {
            let _ = writeln!(
                s,
                "{:<9} {:<6} {:>4}  {}: {}",
                r.transport, r.rate, r.consumers, r.status, r.reason
            );
            continue;
        }
        let _ = writeln!(
            s,
            "{:<9} {:<6} {:>4} {:>8.1} {:>8.1} {:>9} {:>9} {:>9} {:>10} {:>10} {:>5}  {}",
            r.transport,
            r.rate,
            r.consumers,
            r.pub_fps,
            r.sub_fps,
            human_ns(r.p50_ns),
            human_ns(r.p99_ns),
            human_ns(r.max_ns),
            human_ns(r.pub_cpu_ns),
            human_ns(r.sub_cpu_ns),
            r.lost,
            r.note
        );
    }
    s
}

fn zero_copy_table(rows: &[ZeroCopyRow]) -> String {
    let mut s = String::new();
    let w = rows.iter().map(|r| r.upstream.len()).fold(20, usize::max);
    let _ = writeln!(
        s,
        "{:<w$} {:>7} {:>9} {:>7} {:>7}",
        "upstream of cuframessink", "buffers", "zero copy", "copied", "dropped"
    );
    for r in rows {
        if r.status == "ok" {
            let _ = writeln!(
                s,
                "{:<w$} {:>7} {:>9} {:>7} {:>7}",
                r.upstream, r.buffers, r.zero_copy, r.copied, r.dropped
            );
        } else {
            let _ = writeln!(s, "{:<w$} {}: {}", r.upstream, r.status, r.reason);
        }
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "transport,rate,consumers,status,reason,pub_fps,sub_fps,p50_ns,p99_ns,max_ns,latency_samples,pub_cpu_ns_per_frame,sub_cpu_ns_per_frame,lost,note\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.2},{:.2},{},{},{},{},{},{},{},{}",
            r.transport,
            r.rate,
            r.consumers,
            r.status,
            csv_field(&r.reason),
            r.pub_fps,
            r.sub_fps,
            r.p50_ns,
            r.p99_ns,
            r.max_ns,
            r.samples,
            r.pub_cpu_ns,
            r.sub_cpu_ns,
            r.lost,
            csv_field(&r.note)
        );
    }
    s
}

fn zero_copy_csv(rows: &[ZeroCopyRow]) -> String {
    let mut s = String::from("upstream,status,reason,buffers,zero_copy,copied,dropped\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{}",
            csv_field(&r.upstream),
            r.status,
            csv_field(&r.reason),
            r.buffers,
            r.zero_copy,
            r.copied,
            r.dropped
        );
    }
    s
}

/// The 1-minute load average (other work on the machine skews figures).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}; {}", gst::version_string())
}

fn parent(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let zero_copy = !args.iter().any(|a| a == "--no-zero-copy");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let out = opt("--out").map(PathBuf::from);
    let transports: Vec<Transport> = match opt("--transports") {
        Some(list) => list
            .split(',')
            .map(|t| Transport::by_name(t).ok_or(format!("unknown transport {t}")))
            .collect::<Result<_, _>>()?,
        None => Transport::ALL.to_vec(),
    };
    let dir = std::env::temp_dir().join(format!("cuframes-gst-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The cuframes streams of this run go there too (the parent's own
    // zero-copy pipelines and the children).
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
    let started = Instant::now();
    let load_before = load();
    let head = format!(
        "{}\n1080p NV12 ({FRAME_BYTES} bytes/frame), videotestsrc pattern={PATTERN}; {} run",
        machine(),
        if quick { "quick" } else { "full" }
    );
    eprintln!("{head}");
    let mut rows = Vec::new();
    let mut index = 0;
    let reasons: Vec<_> = transports.iter().map(|&t| (t, unavailable(t))).collect();
    for rate in [Rate::Fps60, Rate::Unpaced] {
        for consumers in [1, 4] {
            for (t, why) in &reasons {
                index += 1;
                let row = match why {
                    Some(why) => Row {
                        transport: t.name().into(),
                        rate: rate.name().into(),
                        consumers,
                        status: "skipped".into(),
                        reason: why.clone(),
                        ..Default::default()
                    },
                    None => {
                        measure(*t, rate, consumers, quick, &dir, index).unwrap_or_else(|e| Row {
                            transport: t.name().into(),
                            rate: rate.name().into(),
                            consumers,
                            status: "failed".into(),
                            reason: explain(*t, e),
                            ..Default::default()
                        })
                    }
                };
                eprint!(
                    "{}",
                    table(std::slice::from_ref(&row))
                        .lines()
                        .nth(1)
                        .unwrap_or("")
                );
                eprintln!(" [{:.0?}]", started.elapsed());
                rows.push(row);
            }
        }
    }
    let zc = if zero_copy {
        zero_copy_rows(quick, &dir)
    } else {
        Vec::new()
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!("{head}\n");
    println!(
        "Latency: stamp before the producer's sink to arrival after the consumer's source (worst consumer);\n\
         cpu/f: process CPU time per frame (producer: drawing included; consumers: mean); lost: sequence gaps.\n"
    );
    print!("{}", table(&rows));
    if !zc.is_empty() {
        println!("\nWho wrote the frames cuframessink published (1080p NV12, sync=false):\n");
        print!("{}", zero_copy_table(&zc));
    }
    println!(
        "\n[{:.1?}; load average {load_before} before the run, {} after]",
        started.elapsed(),
        load()
    );
    if let Some(out) = out {
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        std::fs::write(out.join("gst-bench.csv"), csv(&rows)).map_err(|e| e.to_string())?;
        std::fs::write(out.join("gst-zero-copy.csv"), zero_copy_csv(&zc))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = gst::init() {
        eprintln!("gst-bench: GStreamer does not initialise: {e}");
        std::process::exit(2);
    }
    if let Err(e) = gstcuframes::plugin_register_static() {
        eprintln!("gst-bench: cannot register the cuframes elements: {e}");
        std::process::exit(2);
    }
    let result = match args.first().map(String::as_str) {
        Some("--child") => child(
            args.get(1).map_or("", String::as_str),
            args.get(2..).unwrap_or_default(),
        ),
        _ => parent(&args),
    };
    if let Err(e) = result {
        eprintln!("gst-bench: {e}");
        std::process::exit(1);
    }
}
