//! The bridge against the local handoff, in one run: 1080p NV12 frames
//! (uncompressed, LZ4 on a test pattern, LZ4 on noise) and a 20 Mbit/s
//! packet stream, over Zenoh on 127.0.0.1 between two bridge processes.
//! Prints throughput (lossless, as fast as it goes), latency at a paced
//! rate (publish to a far-side reader, one clock: same host), and the CPU
//! each bridge process spends per frame.
//!
//! `cargo build --release -p cuframes-bridge --examples &&
//!  target/release/examples/bridge-bench [--quick]`

use cuframes::{
    packet, Codec, FrameLayout, Mode, PacketMeta, PacketPublisher, PacketStream, PacketSubscriber,
    PixelFormat, Publisher, PublisherOptions, Subscriber,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Config {
    frames: u64,
    paced: u64,
    bridge: PathBuf,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let exe = std::env::current_exe().unwrap();
    let bridge = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("cuframes-bridge"))
        .filter(|p| p.is_file())
        .expect("cuframes-bridge built beside the examples (cargo build -p cuframes-bridge)");
    let cfg = Config {
        frames: if quick { 30 } else { 600 },
        paced: if quick { 15 } else { 150 },
        bridge,
    };
    let dir = std::env::temp_dir().join(format!("cuframes-bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
    println!("cuframes bridge benchmark: {} frames a throughput run, {} paced at 30/s for latency; one host, loopback", cfg.frames, cfg.paced);
    println!(
        "{:<38} {:>9} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "row", "frames/s", "MB/s", "p50 us", "p99 us", "export us/f", "import us/f"
    );
    let layout = FrameLayout::new(PixelFormat::Nv12, 1920, 1080, 64).unwrap();
    let pattern = pattern_frame(&layout);
    let noise = noise_frame(&layout);
    frames_row(&cfg, "local handoff, 1080p NV12", &layout, &pattern, None);
    frames_row(
        &cfg,
        "bridge 1080p, uncompressed",
        &layout,
        &pattern,
        Some("none"),
    );
    frames_row(
        &cfg,
        "bridge 1080p, lz4 (test pattern)",
        &layout,
        &pattern,
        Some("lz4"),
    );
    frames_row(
        &cfg,
        "bridge 1080p, lz4 (noise)",
        &layout,
        &noise,
        Some("lz4"),
    );
    packets_row(&cfg, "local handoff, 20 Mbit/s H.264-sized", false);
    packets_row(&cfg, "bridge, 20 Mbit/s H.264-sized", true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A frame of the moving test pattern (compresses well).
fn pattern_frame(layout: &FrameLayout) -> Vec<u8> {
    let mut slot = vec![0u8; layout.slot_bytes as usize];
    cuframes::testsrc::fill(layout, &mut slot, 1);
    let mut packed = vec![0u8; layout.packed_bytes() as usize];
    for (src, dst, len) in layout.packed_rows() {
        let (src, dst, len) = (src as usize, dst as usize, len as usize);
        packed[dst..dst + len].copy_from_slice(&slot[src..src + len]);
    }
    packed
}

/// Noise (does not compress): the worst case for LZ4.
fn noise_frame(layout: &FrameLayout) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..layout.packed_bytes())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The two bridge processes of a row.
struct Pair {
    exporter: Child,
    importer: Child,
}

impl Pair {
    fn start(cfg: &Config, src: &str, dst: &str, compress: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let spawn = |args: &[&str]| {
            Command::new(&cfg.bridge)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let exporter = spawn(&[
            "export",
            "--key",
            src,
            "--as",
            src,
            "--mode",
            "lossless",
            "--compress",
            compress,
            "--listen",
            &endpoint,
        ]);
        let importer = spawn(&[
            "import",
            "--remote",
            src,
            "--key",
            dst,
            "--mode",
            "lossless",
            "--connect",
            &endpoint,
        ]);
        Self { exporter, importer }
    }

    fn cpu(&self) -> (Duration, Duration) {
        (cpu_of(self.exporter.id()), cpu_of(self.importer.id()))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in [&mut self.exporter, &mut self.importer] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// User plus system CPU time of a process.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn active(key: &str) -> usize {
    cuframes::stream_status(key).map_or(0, |s| s.stats.active().count())
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0)
}

struct Row {
    fps: f64,
    mbs: f64,
    p50: u64,
    p99: u64,
    cpu: Option<(Duration, Duration)>,
    n: u64,
}

fn print(name: &str, r: &Row) {
    let per = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6 / r.n as f64);
    let (e, i) = r
        .cpu
        .map_or(("-".into(), "-".into()), |(e, i)| (per(e), per(i)));
    println!(
        "{name:<38} {:>9.0} {:>10.0} {:>10} {:>10} {e:>12} {i:>12}",
        r.fps,
        r.mbs,
        r.p50 / 1000,
        r.p99 / 1000
    );
}

fn frames_row(
    cfg: &Config,
    name: &str,
    layout: &FrameLayout,
    content: &[u8],
    compress: Option<&str>,
) {
    static ROW: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = ROW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = format!("bench-src-{n}");
    let dst = if compress.is_some() {
        format!("bench-dst-{n}")
    } else {
        src.clone()
    };
    let options = PublisherOptions {
        slot_count: 8,
        block_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut publisher = Publisher::create(&src, *layout, options).unwrap();
    let pair = compress.map(|c| Pair::start(cfg, &src, &dst, c));
    if pair.is_some() {
        wait_until("the importer's stream", || {
            active(&src) >= 1 && cuframes::stream_status(&dst).is_ok()
        });
    }
    let mut reader = Subscriber::connect(&dst, "bench", Mode::Queue, Default::default()).unwrap();
    let run =
        |publisher: &mut Publisher, reader: &mut Subscriber, count: u64, pace: Option<Duration>| {
            let t = std::thread::scope(|s| {
                s.spawn(|| {
                    for _ in 0..count {
                        publisher
                            .publish_from(content, cuframes::now_ns() as i64)
                            .unwrap();
                        if let Some(p) = pace {
                            std::thread::sleep(p);
                        }
                    }
                });
                let start = Instant::now();
                let mut lat = Vec::new();
                for _ in 0..count {
                    let f = reader.next_frame(Duration::from_secs(30)).expect("frame");
                    lat.push(cuframes::now_ns().saturating_sub(f.pts_ns() as u64));
                }
                (start.elapsed(), lat)
            });
            t
        };
    let before = pair.as_ref().map(Pair::cpu);
    let (took, _) = run(&mut publisher, &mut reader, cfg.frames, None);
    let cpu = pair.as_ref().zip(before).map(|(p, (e0, i0))| {
        let (e1, i1) = p.cpu();
        (e1 - e0, i1 - i0)
    });
    let (_, mut lat) = run(
        &mut publisher,
        &mut reader,
        cfg.paced,
        Some(Duration::from_millis(33)),
    );
    let fps = cfg.frames as f64 / took.as_secs_f64();
    print(
        name,
        &Row {
            fps,
            mbs: fps * content.len() as f64 / 1e6,
            p50: percentile(&mut lat, 0.5),
            p99: percentile(&mut lat, 0.99),
            cpu,
            n: cfg.frames,
        },
    );
}

fn packets_row(cfg: &Config, name: &str, bridged: bool) {
    let key = if bridged {
        "bench-pk-src"
    } else {
        "bench-pk-local"
    };
    let dst = if bridged { "bench-pk-dst" } else { key };
    // 20 Mbit/s at 30 packets a second: ~83 KB a packet, a keyframe (4x)
    // every 30.
    let stream = PacketStream {
        codec: Codec::H264,
        max_packet: 1 << 20,
        extradata: vec![0, 0, 0, 1, 0x67],
        width: 1920,
        height: 1080,
    };
    let options = PublisherOptions {
        slot_count: 64,
        block_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut publisher = PacketPublisher::create(key, &stream, options).unwrap();
    let pair = bridged.then(|| Pair::start(cfg, key, dst, "none"));
    if bridged {
        wait_until("the importer's stream", || {
            active(key) >= 1 && cuframes::stream_status(dst).is_ok()
        });
    }
    let mut reader =
        PacketSubscriber::connect(dst, "bench", Mode::Queue, Default::default()).unwrap();
    let delta = vec![0x5au8; 20_000_000 / 8 / 30 * 30 / 33];
    let key_frame = vec![0xa5u8; delta.len() * 4];
    let run = |publisher: &mut PacketPublisher,
               reader: &mut PacketSubscriber,
               count: u64,
               pace: Option<Duration>| {
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..count {
                    let key = i % 30 == 0;
                    let data = if key { &key_frame } else { &delta };
                    let now = cuframes::now_ns() as i64;
                    let meta = PacketMeta {
                        len: data.len() as u64,
                        pts_ns: now,
                        dts_ns: now,
                        duration_ns: 33_333_333,
                        flags: if key { packet::KEY } else { 0 },
                    };
                    publisher.publish(data, &meta).unwrap();
                    if let Some(p) = pace {
                        std::thread::sleep(p);
                    }
                }
            });
            let start = Instant::now();
            let mut lat = Vec::new();
            let mut bytes = 0u64;
            for _ in 0..count {
                let p = reader.next_packet(Duration::from_secs(30)).expect("packet");
                bytes += p.data().len() as u64;
                lat.push(cuframes::now_ns().saturating_sub(p.pts_ns() as u64));
            }
            (start.elapsed(), lat, bytes)
        })
    };
    let before = pair.as_ref().map(Pair::cpu);
    let (took, _, bytes) = run(&mut publisher, &mut reader, cfg.frames, None);
    let cpu = pair.as_ref().zip(before).map(|(p, (e0, i0))| {
        let (e1, i1) = p.cpu();
        (e1 - e0, i1 - i0)
    });
    let (_, mut lat, _) = run(
        &mut publisher,
        &mut reader,
        cfg.paced,
        Some(Duration::from_millis(33)),
    );
    print(
        name,
        &Row {
            fps: cfg.frames as f64 / took.as_secs_f64(),
            mbs: bytes as f64 / took.as_secs_f64() / 1e6,
            p50: percentile(&mut lat, 0.5),
            p99: percentile(&mut lat, 0.99),
            cpu,
            n: cfg.frames,
        },
    );
}
