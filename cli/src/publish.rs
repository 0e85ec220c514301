//! `cuframes publish`: a test pattern, or a video file decoded by ffmpeg.

use crate::live::{publish_pattern, status_line, Pacer};
use crate::{invalid, parse_format, parse_size, stdout_is_tty};
use cuframes::{
    testsrc, Error, ErrorCode, FrameLayout, LosslessPolicy, PixelFormat, Publisher,
    PublisherOptions, Result, RingStats,
};
use cuframes_cuda::{CudaPublisher, CudaPublisherOptions, ExportRequest};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["testsrc", "input"])))]
pub struct Args {
    /// Stream key.
    #[arg(long)]
    pub key: String,
    /// Test pattern `WxH@FPS` (FPS 0: as fast as the ring allows).
    #[arg(long, value_name = "WxH@FPS")]
    pub testsrc: Option<String>,
    /// Video file to decode with ffmpeg.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Pixel format: nv12, p010, gray8, rgb24, rgba8, bgr24.
    #[arg(long, default_value = "nv12", value_parser = parse_format)]
    pub format: PixelFormat,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Stop after this many frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// Slots in the ring (default 8; 64 with --encoded, so that a late
    /// subscriber can start at a keyframe still in the ring).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Publish the file's encoded video packets (H.264/H.265, no decoding:
    /// ffmpeg -c copy) instead of decoded frames.
    #[arg(long, requires = "input", conflicts_with_all = ["cuda", "testsrc"])]
    pub encoded: bool,
    /// With --encoded: the largest packet a slot holds, in bytes (K and M
    /// suffixes allowed); a bigger packet stops the publisher with an error.
    #[arg(long, default_value = "1M", value_parser = parse_bytes, requires = "encoded")]
    pub max_packet: u64,
    /// Policy for lagging lossless subscribers: block or drop-oldest.
    #[arg(long, default_value = "block", value_parser = parse_policy)]
    pub policy: LosslessPolicy,
    /// How long a loan waits for a free slot.
    #[arg(long, default_value_t = 1000)]
    pub block_timeout_ms: u64,
    /// Segment file mode (octal): 600 or 660.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub mode: u32,
    /// Loop the input file forever.
    #[arg(long = "loop")]
    pub loop_input: bool,
    /// Decode as fast as possible instead of at the file's frame rate.
    #[arg(long)]
    pub fast: bool,
    /// Put frames in GPU memory.
    #[arg(long)]
    pub cuda: bool,
    /// CUDA device index (with --cuda).
    #[arg(long, default_value_t = 0, requires = "cuda")]
    pub device: u32,
    /// How GPU memory is shared (with --cuda): auto, ipc (legacy CUDA IPC:
    /// subscribers in the same pid namespace) or vmm-fd (a file descriptor
    /// over a unix socket: works across containers).
    #[arg(long, default_value = "auto", value_parser = parse_export, requires = "cuda")]
    pub export: ExportRequest,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_policy(s: &str) -> Result<LosslessPolicy, String> {
    match s {
        "block" => Ok(LosslessPolicy::Block),
        "drop-oldest" => Ok(LosslessPolicy::DropOldest),
        _ => Err(format!("{s:?}: block or drop-oldest")),
    }
}

fn parse_export(s: &str) -> Result<ExportRequest, String> {
    match s {
        "auto" => Ok(ExportRequest::Auto),
        "ipc" => Ok(ExportRequest::Ipc),
        "vmm-fd" => Ok(ExportRequest::VmmFd),
        _ => Err(format!("{s:?}: auto, ipc or vmm-fd")),
    }
}

/// Parses a byte count with an optional K or M (binary) suffix.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1 << 10),
        None => match s.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (s, 1),
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?}: a byte count such as 1048576, 512K or 4M"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("mode {s:?}: {e}"))
}

/// Parses `WxH@FPS`.
pub fn parse_testsrc(s: &str) -> Result<(u32, u32, f64)> {
    let (size, fps) = s.split_once('@').unwrap_or((s, "30"));
    let (w, h) = parse_size(size).map_err(invalid)?;
    let fps: f64 = fps
        .parse()
        .map_err(|e| invalid(format!("fps {fps:?}: {e}")))?;
    if !(0.0..=100_000.0).contains(&fps) {
        return Err(invalid(format!("fps {fps} out of range")));
    }
    Ok((w, h, fps))
}

pub fn run(args: Args) -> Result<()> {
    let stop = crate::stop_flag()?;
    let options = PublisherOptions {
        slot_count: slot_count(&args),
        policy: args.policy,
        block_timeout: Duration::from_millis(args.block_timeout_ms),
        mode: args.mode,
        ..Default::default()
    };
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let done = |n: u64| {
        stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
            || args.frames.is_some_and(|f| n >= f)
    };
    let mut meter = Meter::new(args.quiet);
    if let Some(spec) = &args.testsrc {
        let (w, h, fps) = parse_testsrc(spec)?;
        let mut sink = Sink::create(&args, w, h, options)?;
        if !args.quiet {
            println!(
                "publishing {}x{} {} test pattern at {} fps on {:?} ({} slots, {})",
                w,
                h,
                args.format.name(),
                if fps > 0.0 {
                    fps.to_string()
                } else {
                    "max".into()
                },
                args.key,
                slot_count(&args),
                sink.memory()
            );
        }
        let pacer = Pacer::new(fps);
        let mut n = 0u64;
        while !done(n) {
            match sink.publish_pattern(&pacer, n) {
                Ok(_) => n += 1,
                Err(e) if e.code() == ErrorCode::Timeout => meter.stall(),
                Err(e) => return Err(e),
            }
            meter.tick(&|| sink.host().stats(), n, "frames");
            pacer.wait(n);
        }
        meter.finish(n, "frames");
        return Ok(());
    }
    let input = args.input.clone().expect("clap requires a source");
    if args.encoded {
        let how = crate::encoded::PublishEncoded {
            key: &args.key,
            input: &input,
            max_packet: args.max_packet,
            fast: args.fast,
            loop_input: args.loop_input,
            quiet: args.quiet,
        };
        return crate::encoded::publish(&how, options, &done, &mut meter);
    }
    publish_file(&args, &input, options, &done, &mut meter)
}

/// Where frames go: host shared memory, or GPU memory with `--cuda`.
enum Sink {
    Host(Box<Publisher>),
    Cuda {
        publisher: Box<CudaPublisher>,
        /// A slot-shaped host image for the test pattern, then packed.
        image: Vec<u8>,
        packed: Vec<u8>,
    },
}

impl Sink {
    fn create(args: &Args, w: u32, h: u32, options: PublisherOptions) -> Result<Self> {
        if !args.cuda {
            let layout = FrameLayout::new(args.format, w, h, 64)?;
            return Publisher::create(&args.key, layout, options).map(|p| Sink::Host(Box::new(p)));
        }
        let publisher = CudaPublisher::create(
            &args.key,
            args.format,
            w,
            h,
            CudaPublisherOptions {
                ring: options,
                device: args.device,
                export: args.export,
                ..Default::default()
            },
        )?;
        let layout = *publisher.layout();
        Ok(Sink::Cuda {
            image: vec![0; layout.slot_bytes as usize],
            packed: vec![0; layout.packed_bytes() as usize],
            publisher: Box::new(publisher),
        })
    }

    fn host(&self) -> &Publisher {
        match self {
            Sink::Host(p) => p,
            Sink::Cuda { publisher, .. } => publisher.host(),
        }
    }

    fn layout(&self) -> FrameLayout {
        *self.host().layout()
    }

    fn memory(&self) -> String {
        match self {
            Sink::Host(_) => "host memory".into(),
            Sink::Cuda { publisher, .. } => format!(
                "GPU {} memory, {} export",
                publisher.device(),
                publisher.export_mode().name()
            ),
        }
    }

    /// Copies a tightly packed frame in and publishes it.
    fn publish_packed(&mut self, packed: &[u8], pts_ns: i64) -> Result<u64> {
        match self {
            Sink::Host(p) => p.publish_from(packed, pts_ns),
            Sink::Cuda { publisher, .. } => publisher.publish_from_host(packed, pts_ns),
        }
    }

    /// Publishes test-pattern frame `n`: written in place on the host, or
    /// drawn in host memory and uploaded.
    fn publish_pattern(&mut self, pacer: &Pacer, n: u64) -> Result<u64> {
        let layout = self.layout();
        match self {
            Sink::Host(p) => publish_pattern(p, pacer, n),
            Sink::Cuda {
                publisher,
                image,
                packed,
            } => {
                let seq = publisher.host().stats().head_seq + 1;
                testsrc::fill(&layout, image, seq);
                for (src, dst, len) in layout.packed_rows() {
                    let (src, dst, len) = (src as usize, dst as usize, len as usize);
                    packed[dst..dst + len].copy_from_slice(&image[src..src + len]);
                }
                publisher.publish_from_host(packed, pacer.pts_ns(n))
            }
        }
    }
}

/// Whether ffmpeg can decode on GPU `device`, or why not.
fn gpu_decoder(device: u32) -> std::result::Result<(), String> {
    if cuframes_cuda::is_simulator(device) {
        return Err("the CUDA driver is the cuframes simulator, which has no video decoder".into());
    }
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-hwaccels"])
        .output()
        .map_err(|e| format!("ffmpeg -hwaccels: {e}"))?;
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "cuda");
    if listed {
        Ok(())
    } else {
        Err("this ffmpeg has no CUDA hardware decoder (ffmpeg -hwaccels)".into())
    }
}

/// The ffmpeg pixel format name for ours.
fn ffmpeg_pix_fmt(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Nv12 => "nv12",
        PixelFormat::P010 => "p010le",
        PixelFormat::Gray8 => "gray",
        PixelFormat::Rgb24 => "rgb24",
        PixelFormat::Rgba8 => "rgba",
        PixelFormat::Bgr24 => "bgr24",
    }
}

/// Slots asked for, or the default: 8 frames, or 64 packets (two seconds
/// of 30 fps video, so a late subscriber finds a keyframe in the ring).
fn slot_count(args: &Args) -> u32 {
    args.slots.unwrap_or(if args.encoded { 64 } else { 8 })
}

pub(crate) fn tool_missing(tool: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::new(
            ErrorCode::NotFound,
            format!("{tool} not found on PATH: install ffmpeg (e.g. `apt-get install ffmpeg`) to publish video files"),
        )
    } else {
        Error::io(format!("run {tool}"), e)
    }
}

/// The `entries` (ffprobe `stream=` names, comma-separated) of the first
/// video stream of `input`, in order.
pub(crate) fn probe_stream(input: &std::path::Path, entries: &str) -> Result<Vec<String>> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg(format!("stream={entries}"))
        .args(["-of", "csv=p=0"])
        .arg(input)
        .output()
        .map_err(|e| tool_missing("ffprobe", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<String> = text.trim().split(',').map(str::to_owned).collect();
    if !out.status.success() || fields.len() < entries.split(',').count() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "{}: no video stream ({})",
                input.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(fields)
}

/// Width, height and frame rate of the first video stream.
fn probe(input: &std::path::Path) -> Result<(u32, u32, f64)> {
    let fields = probe_stream(input, "width,height,r_frame_rate")?;
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|e| invalid(format!("ffprobe said {s:?}: {e}")))
    };
    let fps = match fields[2].split_once('/') {
        Some((a, b)) => a.parse::<f64>().unwrap_or(0.0) / b.parse::<f64>().unwrap_or(1.0).max(1.0),
        None => fields[2].parse().unwrap_or(0.0),
    };
    Ok((num(&fields[0])?, num(&fields[1])?, fps))
}

fn publish_file(
    args: &Args,
    input: &std::path::Path,
    options: PublisherOptions,
    done: &dyn Fn(u64) -> bool,
    meter: &mut Meter,
) -> Result<()> {
    let (w, h, fps) = probe(input)?;
    let mut sink = Sink::create(args, w, h, options)?;
    let layout = sink.layout();
    if !args.quiet {
        println!(
            "publishing {} ({}x{} @ {:.2} fps, {}) on {:?} ({})",
            input.display(),
            w,
            h,
            fps,
            args.format.name(),
            args.key,
            sink.memory()
        );
    }
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    if !args.fast {
        cmd.arg("-re");
    }
    if args.loop_input {
        cmd.args(["-stream_loop", "-1"]);
    }
    if args.cuda {
        let how = match gpu_decoder(args.device) {
            Ok(()) => {
                cmd.args([
                    "-hwaccel",
                    "cuda",
                    "-hwaccel_device",
                    &args.device.to_string(),
                ]);
                "decoding on the GPU with ffmpeg's CUDA decoder (-hwaccel cuda; ffmpeg \
                 decodes on the CPU instead if the GPU cannot decode this stream), then \
                 uploading each frame"
                    .to_owned()
            }
            Err(why) => format!("{why}: decoding on the CPU, then uploading each frame"),
        };
        if !args.quiet {
            println!("{how}");
        }
    }
    cmd.arg("-i").arg(input);
    cmd.args([
        "-f",
        "rawvideo",
        "-pix_fmt",
        ffmpeg_pix_fmt(args.format),
        "-",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| tool_missing("ffmpeg", e))?;
    let mut pipe = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; layout.packed_bytes() as usize];
    let start = Instant::now();
    let mut n = 0u64;
    let result = loop {
        if done(n) {
            break Ok(());
        }
        match pipe.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(Error::io("read from ffmpeg", e)),
        }
        let pts = start.elapsed().as_nanos() as i64;
        match sink.publish_packed(&buf, pts) {
            Ok(_) => n += 1,
            Err(e) if e.code() == ErrorCode::Timeout => meter.stall(),
            Err(e) => break Err(e),
        }
        meter.tick(&|| sink.host().stats(), n, "frames");
    };
    let _ = child.kill();
    let _ = child.wait();
    meter.finish(n, "frames");
    result
}

/// Per-second progress output.
pub(crate) struct Meter {
    quiet: bool,
    tty: bool,
    last: Instant,
    last_n: u64,
    stalls: u64,
}

impl Meter {
    fn new(quiet: bool) -> Self {
        Self {
            quiet,
            tty: stdout_is_tty(),
            last: Instant::now(),
            last_n: 0,
            stalls: 0,
        }
    }
    pub(crate) fn stall(&mut self) {
        self.stalls += 1;
    }
    /// Prints a progress line at most once a second; `stats` is read only
    /// then. `unit` names what is counted (frames, packets).
    pub(crate) fn tick(&mut self, stats: &dyn Fn() -> RingStats, n: u64, unit: &str) {
        let dt = self.last.elapsed();
        if self.quiet || dt < Duration::from_secs(1) {
            return;
        }
        let stats = stats();
        let line = format!(
            "published {n} {unit}, {:.1}/s, {} subscribers, occupancy {}/{}, stalls {}",
            (n - self.last_n) as f64 / dt.as_secs_f64(),
            stats.active().count(),
            stats.occupancy,
            stats.slot_count,
            self.stalls
        );
        status_line(self.tty, &line);
        (self.last, self.last_n) = (Instant::now(), n);
    }
    pub(crate) fn finish(&self, n: u64, unit: &str) {
        if !self.quiet {
            if self.tty {
                println!();
            }
            println!("published {n} {unit}; stream closed");
        }
    }
}
