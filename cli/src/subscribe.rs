//! `cuframes subscribe`: read a stream, verify, report, dump.

use crate::latency::{human_ns, Samples};
use crate::stdout_is_tty;
use cuframes::{
    testsrc, Error, ErrorCode, Frame, Mode, PixelFormat, ReconnectingSubscriber, Result,
    SubscriberOptions,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Stream key.
    #[arg(long)]
    pub key: String,
    /// Subscriber name shown by `ls`/`stat`.
    #[arg(long)]
    pub name: Option<String>,
    /// newest (latest frame only) or queue (every frame, in order).
    #[arg(long, default_value = "newest", value_parser = parse_mode)]
    pub mode: Mode,
    /// Exit 0 after this many intact frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Longest wait for one frame.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Longest wait for the stream to appear.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// Write the first frame as PNG into this directory.
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
    /// Check every frame's test-pattern stamp (seq and checksum).
    #[arg(long)]
    pub verify: bool,
    /// Hold each frame this long before releasing it (simulated work);
    /// with `--verify` the frame is checked again after the hold, proving
    /// nobody rewrote it meanwhile.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Reconnect when the publisher dies or restarts.
    #[arg(long)]
    pub reconnect: bool,
    /// Accept a stream whose segment another user owns (a group-shared
    /// stream published with `--mode 660`).
    #[arg(long)]
    pub allow_other_owner: bool,
    /// Machine-readable `report` lines instead of human ones.
    #[arg(long)]
    pub report: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "newest" | "newest-only" => Ok(Mode::NewestOnly),
        "queue" => Ok(Mode::Queue),
        _ => Err(format!("{s:?}: newest or queue")),
    }
}

/// Running totals, printed per second and at the end.
#[derive(Default)]
struct Tally {
    frames: u64,
    bad: u64,
    lagged: u64,
    window_frames: u64,
    window: Samples,
    all: Samples,
}

pub fn run(args: Args) -> Result<()> {
    let stop = crate::stop_flag()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("cli-{}", std::process::id()));
    let options = SubscriberOptions {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        allow_other_owner: args.allow_other_owner,
        ..Default::default()
    };
    let mut sub = ReconnectingSubscriber::new(&args.key, &name, args.mode, options.clone());
    sub.ensure_connected(options.connect_timeout)?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let tty = stdout_is_tty() && !args.report;
    let mut t = Tally::default();
    let mut last_print = Instant::now();
    let mut last_seq = 0u64;
    let mut dumped = args.dump.is_none();
    let outcome = loop {
        if stop.load(Ordering::Relaxed) || args.frames.is_some_and(|n| t.frames >= n) {
            break Ok(());
        }
        let got = next_frame(&mut sub, &args, timeout, &stop);
        match got {
            Ok(frame) => {
                let latency = cuframes::now_ns().saturating_sub(frame.commit_ns());
                if args.mode == Mode::Queue
                    && last_seq != 0
                    && frame.seq() <= last_seq
                    && !args.reconnect
                {
                    t.bad += 1;
                    eprintln!("frame {} after {}: out of order", frame.seq(), last_seq);
                }
                last_seq = frame.seq();
                if args.verify {
                    if let Err(d) = testsrc::verify(frame.layout(), frame.data(), frame.seq()) {
                        t.bad += 1;
                        eprintln!("frame {}: damaged: {d:?}", frame.seq());
                    }
                }
                if !dumped {
                    let dir = args.dump.as_deref().expect("dump dir");
                    let path = dump_png(&frame, dir, &args.key)?;
                    if !args.report {
                        println!("wrote {}", path.display());
                    }
                    dumped = true;
                }
                if args.hold_ms > 0 {
                    std::thread::sleep(Duration::from_millis(args.hold_ms));
                    if args.verify {
                        if let Err(d) = testsrc::verify(frame.layout(), frame.data(), frame.seq()) {
                            t.bad += 1;
                            eprintln!("frame {}: rewritten while held: {d:?}", frame.seq());
                        }
                    }
                }
                frame.release();
                t.frames += 1;
                t.window_frames += 1;
                t.window.push(latency);
                t.all.push(latency);
            }
            Err(e) if e.code() == ErrorCode::Closed && args.frames.is_none() => break Ok(()),
            // Evicted from lossless duty after lagging: the gap is counted
            // (dropped) and reading goes on from the newest frame.
            Err(e) if e.code() == ErrorCode::Lagged => {
                t.lagged += 1;
                last_seq = 0;
                eprintln!("{e}");
            }
            // Interrupted by SIGINT/SIGTERM while waiting: a clean stop.
            Err(_) if stop.load(Ordering::Relaxed) => break Ok(()),
            Err(e) => break Err(e),
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let stats = sub.subscriber().map(|s| s.stats()).unwrap_or_default();
            print_line(
                &name,
                &mut t,
                last_print.elapsed(),
                stats,
                tty,
                args.report,
                false,
            );
            last_print = Instant::now();
            t.window.clear();
            t.window_frames = 0;
        }
    };
    let stats = sub.subscriber().map(|s| s.stats()).unwrap_or_default();
    if tty {
        println!();
    }
    t.window = t.all.clone();
    t.window_frames = t.frames;
    print_line(
        &name,
        &mut t,
        Duration::ZERO,
        stats,
        false,
        args.report,
        true,
    );
    outcome?;
    if t.bad > 0 {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!("{} damaged or misordered frames", t.bad),
        ));
    }
    Ok(())
}

/// Waits for the next frame in short slices, so SIGINT/SIGTERM end a long
/// wait promptly; with `--reconnect`, a vanished publisher is waited out
/// within the same timeout.
fn next_frame(
    sub: &mut ReconnectingSubscriber,
    args: &Args,
    timeout: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Frame> {
    let started = Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let slice = left.min(Duration::from_millis(100));
        let got = if args.reconnect {
            sub.next_frame(slice)
        } else {
            sub.ensure_connected(slice)
                .and_then(|s| s.next_frame(slice))
        };
        let waitable = |code| {
            code == ErrorCode::Timeout
                || (args.reconnect
                    && matches!(
                        code,
                        ErrorCode::NotFound | ErrorCode::Closed | ErrorCode::PublisherGone
                    ))
        };
        match got {
            Err(e) if waitable(e.code()) && !stop.load(Ordering::Relaxed) && !left.is_zero() => {
                continue
            }
            Err(e) if e.code() == ErrorCode::Timeout => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("no frame within {timeout:?}"),
                ))
            }
            r => return r,
        }
    }
}

fn print_line(
    name: &str,
    t: &mut Tally,
    window: Duration,
    stats: cuframes::SubscriberStats,
    tty: bool,
    report: bool,
    last: bool,
) {
    let fps = if window.is_zero() {
        0.0
    } else {
        t.window_frames as f64 / window.as_secs_f64()
    };
    let (p50, p99) = (t.window.quantile(0.5), t.window.quantile(0.99));
    if report {
        println!(
            "report name={name} frames={} window_frames={} fps={fps:.2} p50_ns={p50} p99_ns={p99} dropped={} gaps={} bad={} lagged={} final={}",
            t.frames, t.window_frames, stats.dropped, stats.gap_count, t.bad, t.lagged, last as u8
        );
        return;
    }
    let line = format!(
        "{name}: {} frames{} latency p50 {} p99 {}, dropped {}, damaged {}",
        t.frames,
        if last {
            String::new()
        } else {
            format!(", {fps:.1} fps")
        },
        human_ns(p50),
        human_ns(p99),
        stats.dropped,
        t.bad
    );
    crate::live::status_line(tty, &line);
}

/// Writes a frame as an 8-bit PNG (RGB, or grey for GRAY8).
fn dump_png(frame: &Frame, dir: &Path, key: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let path = dir.join(format!("{key}-{}.png", frame.seq()));
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (color, pixels) = to_rgb(frame, w, h);
    let file = std::fs::File::create(&path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(&pixels))
        .map_err(|e| Error::new(ErrorCode::Io, format!("write {}: {e}", path.display())))?;
    Ok(path)
}

fn to_rgb(frame: &Frame, w: usize, h: usize) -> (png::ColorType, Vec<u8>) {
    let row = |plane: usize, r: usize| {
        let p = frame.pitch(plane) as usize;
        &frame.plane(plane)[r * p..]
    };
    let mut out = Vec::with_capacity(w * h * 3);
    match frame.format() {
        PixelFormat::Gray8 => {
            (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w]));
            return (png::ColorType::Grayscale, out);
        }
        PixelFormat::Rgba8 => {
            (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w * 4]));
            return (png::ColorType::Rgba, out);
        }
        PixelFormat::Rgb24 => (0..h).for_each(|r| out.extend_from_slice(&row(0, r)[..w * 3])),
        PixelFormat::Bgr24 => (0..h).for_each(|r| {
            row(0, r)[..w * 3]
                .chunks_exact(3)
                .for_each(|p| out.extend_from_slice(&[p[2], p[1], p[0]]))
        }),
        f @ (PixelFormat::Nv12 | PixelFormat::P010) => {
            // 8-bit samples: NV12 bytes, or the high byte of P010's words.
            let bps = if f == PixelFormat::P010 { 2 } else { 1 };
            let sample = |s: &[u8], i: usize| s[i * bps + bps - 1] as f32;
            for r in 0..h {
                let (y, uv) = (row(0, r), row(1, r / 2));
                for c in 0..w {
                    let yy = 1.164 * (sample(y, c) - 16.0);
                    let (u, v) = (sample(uv, c & !1) - 128.0, sample(uv, (c & !1) + 1) - 128.0);
                    let px = [yy + 1.596 * v, yy - 0.392 * u - 0.813 * v, yy + 2.017 * u];
                    out.extend(px.map(|x| x.clamp(0.0, 255.0) as u8));
                }
            }
        }
    }
    (png::ColorType::Rgb, out)
}
