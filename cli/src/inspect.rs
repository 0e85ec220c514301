//! `cuframes ls`, `stat` (as text or as JSON, schema in `docs/cli.md`)
//! and `doctor`.

use cuframes::{list_streams, stream_status, Mode, Result, StreamStatus};
use serde::Serialize;

/// Version of the JSON that `ls --json` and `stat --json` print. Fields
/// may be added without a bump; a field removed, renamed, re-typed or given
/// a new meaning bumps it.
pub const JSON_SCHEMA: u32 = 1;

/// Arguments of `cuframes ls`.
#[derive(clap::Args, Debug, Clone)]
pub struct LsArgs {
    /// Print JSON (schema 1, see docs/cli.md) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `cuframes stat`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatArgs {
    /// Stream key.
    pub key: String,
    /// Print JSON (schema 1, see docs/cli.md) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cuframes ls`: every stream in the shm directory.
pub fn ls(args: &LsArgs) -> Result<()> {
    // A missing directory (a typo in CUFRAMES_SHM_DIR) is not "no streams".
    let dir = cuframes::shm_dir();
    std::fs::read_dir(&dir)
        .map_err(|e| cuframes::Error::io(format!("shm directory {}", dir.display()), e))?;
    let streams = list_streams();
    if args.json {
        let mut out = LsJson {
            schema: JSON_SCHEMA,
            shm_dir: cuframes::shm_dir().display().to_string(),
            streams: Vec::new(),
            unreadable: Vec::new(),
        };
        for (key, status) in streams {
            match status {
                Ok(s) => out.streams.push(StreamJson::new(&s)),
                Err(e) => out.unreadable.push(UnreadableJson {
                    key,
                    error: ErrorJson {
                        code: e.code() as i32,
                        name: e.code().name(),
                        message: e.message().to_owned(),
                    },
                }),
            }
        }
        return print_json(&out);
    }
    if streams.is_empty() {
        println!("no streams in {}", cuframes::shm_dir().display());
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:<6} {:<6} {:>10} {:<9} {:>7} {:>5} {:>5} {:>8} {:<8}",
        "KEY", "PID", "ALIVE", "FORMAT", "SIZE", "MEMORY", "FPS", "SUBS", "OCC", "DROPS", "STATE"
    );
    let mut stale = 0;
    for (key, status) in streams {
        match status {
            Ok(s) => {
                stale += usize::from(!s.publisher_alive);
                println!("{}", ls_row(&s));
            }
            Err(e) => println!("{key:<24} unreadable: {e}"),
        }
    }
    if stale > 0 {
        println!("{stale} stale stream(s): the publisher died; `cuframes gc` removes what it left");
    }
    Ok(())
}

fn ls_row(s: &StreamStatus) -> String {
    let h = &s.info.header;
    format!(
        "{:<24} {:>8} {:<6} {:<6} {:>10} {:<9} {:>7.1} {:>5} {:>5} {:>8} {:<8}",
        s.key,
        h.publisher_pid,
        if s.publisher_alive { "yes" } else { "no" },
        s.info.format_name(),
        format!("{}x{}", h.layout.width, h.layout.height),
        s.info.memory.name(),
        s.fps(),
        s.stats.active().count(),
        format!("{}/{}", s.stats.occupancy, s.stats.slot_count),
        s.dropped(),
        state_name(s)
    )
}

/// The GPU of a stream in GPU memory: its UUID as `nvidia-smi -L` prints
/// it, and its ordinal in the publisher's process.
fn device(s: &StreamStatus) -> Option<(String, u32)> {
    if s.info.memory == cuframes::MemoryKind::Host {
        return None;
    }
    let h = &s.info.header;
    let hex: String = h.device_uuid.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    Some((uuid, h.device_ordinal))
}

/// `open`, `closed` or `starting`; `stale` whenever the publisher is dead
/// (its lock on byte 63 of the segment file is not held).
fn state_name(s: &StreamStatus) -> &'static str {
    if !s.publisher_alive {
        return "stale";
    }
    match s.stats.state {
        cuframes::core::state::OPEN => "open",
        cuframes::core::state::CLOSED => "closed",
        _ => "starting",
    }
}

/// `cuframes stat KEY`: one stream in detail.
pub fn stat(args: &StatArgs) -> Result<()> {
    let key = args.key.as_str();
    let s = stream_status(key)?;
    if args.json {
        return print_json(&StatJson {
            schema: JSON_SCHEMA,
            stream: StreamJson::new(&s),
        });
    }
    let h = &s.info.header;
    println!("stream      {key}");
    println!(
        "publisher   pid {} ({}), epoch {:016x}",
        h.publisher_pid,
        if s.publisher_alive { "alive" } else { "dead" },
        h.epoch
    );
    println!("state       {}", state_name(&s));
    if !s.publisher_alive {
        println!("            stale: the publisher died; `cuframes gc` removes the segment");
    }
    if let Some(codec) = s.info.codec {
        println!(
            "packets     {} {}x{}, up to {} bytes each, codec configuration {} bytes",
            codec.name(),
            h.layout.width,
            h.layout.height,
            h.layout.slot_bytes,
            h.extradata_len
        );
        println!(
            "bitrate     {:.3} Mbit/s, GOP {} packets, newest keyframe seq {}",
            s.stats.bitrate_bps as f64 / 1e6,
            s.stats.gop,
            s.stats.last_key_seq
        );
    } else {
        println!(
            "frames      {} {}x{}, {} planes, {} bytes/slot",
            s.info.format_name(),
            h.layout.width,
            h.layout.height,
            h.layout.plane_count,
            h.layout.slot_bytes
        );
    }
    for (i, p) in h.layout.planes().iter().enumerate() {
        println!(
            "  plane {i}   offset {} pitch {} rows {} row bytes {}",
            p.offset, p.pitch, p.rows, p.row_bytes
        );
    }
    println!(
        "memory      {} ({} bytes segment)",
        s.info.memory.name(),
        h.segment_len
    );
    if let Some((uuid, ordinal)) = device(&s) {
        println!("device      {uuid} (device {ordinal} in the publisher's process)");
    }
    println!(
        "ring        {} slots, occupancy {}, {} subscriber records, policy {:?}",
        h.slot_count, s.stats.occupancy, h.subscriber_capacity, s.info.policy
    );
    println!(
        "published   {} {} (head seq {}), {:.1} per second",
        s.stats.published,
        s.info.content.name(),
        s.stats.head_seq,
        s.fps()
    );
    let age = cuframes::now_ns().saturating_sub(s.stats.heartbeat_ns);
    println!("heartbeat   {:.0} ms ago", age as f64 / 1e6);
    println!("subscribers {}", s.stats.active().count());
    for r in s.stats.active() {
        println!(
            "  [{}] {:<20} pid {:>7} {:<6} {:<10} held {} received {} dropped {} lag {} evicted {} heartbeat {:.0} ms ago",
            r.index,
            r.name_str(),
            r.pid,
            if s.record_alive(r.index) {
                "alive"
            } else {
                "dead"
            },
            r.mode.map_or_else(|| "?".to_owned(), |m| format!("{m:?}")),
            r.held,
            r.received,
            r.dropped,
            r.lag,
            r.evictions,
            cuframes::now_ns().saturating_sub(r.heartbeat_ns) as f64 / 1e6
        );
    }
    Ok(())
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| cuframes::Error::new(cuframes::ErrorCode::Internal, format!("JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Milliseconds from a monotonic timestamp to now (0 if in the future).
fn age_ms(then_ns: u64) -> u64 {
    cuframes::now_ns().saturating_sub(then_ns) / 1_000_000
}

/// `ls --json`.
#[derive(Serialize)]
struct LsJson {
    schema: u32,
    shm_dir: String,
    streams: Vec<StreamJson>,
    unreadable: Vec<UnreadableJson>,
}

/// `stat --json`: the stream object with the schema version beside it.
#[derive(Serialize)]
struct StatJson {
    schema: u32,
    #[serde(flatten)]
    stream: StreamJson,
}

/// A segment `ls` could not open or validate.
#[derive(Serialize)]
struct UnreadableJson {
    key: String,
    error: ErrorJson,
}

#[derive(Serialize)]
struct ErrorJson {
    code: i32,
    name: &'static str,
    message: String,
}

/// One stream; the field list is documented in `docs/cli.md`.
#[derive(Serialize)]
struct StreamJson {
    key: String,
    state: &'static str,
    stale: bool,
    content: &'static str,
    format: &'static str,
    codec: Option<&'static str>,
    max_packet: Option<u64>,
    extradata_bytes: Option<u32>,
    bitrate_bps: Option<u64>,
    gop: Option<u64>,
    width: u32,
    height: u32,
    memory: &'static str,
    device_uuid: Option<String>,
    device_ordinal: Option<u32>,
    policy: &'static str,
    slot_count: u32,
    subscriber_capacity: u32,
    segment_bytes: u64,
    published: u64,
    head_seq: u64,
    fps: f64,
    occupancy: u32,
    dropped: u64,
    publisher: PublisherJson,
    subscribers: Vec<SubscriberJson>,
}

#[derive(Serialize)]
struct PublisherJson {
    pid: u32,
    alive: bool,
    epoch: String,
    heartbeat_age_ms: u64,
}

#[derive(Serialize)]
struct SubscriberJson {
    index: u32,
    name: String,
    pid: u32,
    alive: bool,
    mode: Option<&'static str>,
    held: u32,
    received: u64,
    dropped: u64,
    lag: u64,
    evictions: u64,
    heartbeat_age_ms: u64,
}

impl StreamJson {
    fn new(s: &StreamStatus) -> Self {
        let h = &s.info.header;
        let packets = s.info.codec.is_some();
        Self {
            key: s.key.clone(),
            state: state_name(s),
            stale: !s.publisher_alive,
            content: s.info.content.name(),
            format: s.info.format_name(),
            codec: s.info.codec.map(cuframes::Codec::name),
            max_packet: packets.then_some(h.layout.slot_bytes),
            extradata_bytes: packets.then_some(h.extradata_len),
            bitrate_bps: packets.then_some(s.stats.bitrate_bps),
            gop: packets.then_some(s.stats.gop),
            width: h.layout.width,
            height: h.layout.height,
            memory: s.info.memory.name(),
            device_uuid: device(s).map(|(uuid, _)| uuid),
            device_ordinal: device(s).map(|(_, ordinal)| ordinal),
            policy: s.info.policy.name(),
            slot_count: h.slot_count,
            subscriber_capacity: h.subscriber_capacity,
            segment_bytes: h.segment_len,
            published: s.stats.published,
            head_seq: s.stats.head_seq,
            fps: s.fps(),
            occupancy: s.stats.occupancy,
            dropped: s.dropped(),
            publisher: PublisherJson {
                pid: h.publisher_pid,
                alive: s.publisher_alive,
                epoch: format!("{:016x}", h.epoch),
                heartbeat_age_ms: age_ms(s.stats.heartbeat_ns),
            },
            subscribers: s
                .stats
                .active()
                .map(|r| SubscriberJson {
                    index: r.index,
                    name: r.name_str().to_owned(),
                    pid: r.pid,
                    alive: s.record_alive(r.index),
                    mode: r.mode.map(Mode::name),
                    held: r.held,
                    received: r.received,
                    dropped: r.dropped,
                    lag: r.lag,
                    evictions: r.evictions,
                    heartbeat_age_ms: age_ms(r.heartbeat_ns),
                })
                .collect(),
        }
    }
}

/// `cuframes doctor`: checks the machine; `Io` (10) if any check failed.
pub fn doctor() -> Result<()> {
    let mut ok = true;
    let mut check = |name: &str, result: std::result::Result<String, String>| match &result {
        Ok(msg) => println!("[ ok ] {name}: {msg}"),
        Err(msg) => {
            println!("[FAIL] {name}: {msg}");
            ok = false;
        }
    };
    let dir = cuframes::shm_dir();
    check("shm directory", shm_dir_report(&dir));
    check("round trip", round_trip());
    check("liveness locks", liveness_locks());
    let cuda = cuda_driver();
    println!(
        "[{}] CUDA driver: {}",
        if cuda.is_ok() { " ok " } else { "info" },
        cuda.unwrap_or_else(|e| e)
    );
    let ffmpeg = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output();
    println!(
        "[{}] ffmpeg: {}",
        if ffmpeg.is_ok() { " ok " } else { "info" },
        match ffmpeg {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            Err(_) => "not found (needed only for `publish --input`)".into(),
        }
    );
    if ok {
        Ok(())
    } else {
        Err(cuframes::Error::new(
            cuframes::ErrorCode::Io,
            "some checks failed",
        ))
    }
}

fn shm_dir_report(dir: &std::path::Path) -> std::result::Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let st = rustix_statvfs(dir)?;
    Ok(format!(
        "{} (mode {:o}, {:.1} GiB free)",
        dir.display(),
        meta.mode() & 0o7777,
        st as f64 / (1u64 << 30) as f64
    ))
}

fn rustix_statvfs(dir: &std::path::Path) -> std::result::Result<u64, String> {
    let c =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail * st.f_frsize)
}

/// Publishes and reads one frame through a private stream.
fn round_trip() -> std::result::Result<String, String> {
    use cuframes::*;
    let key = format!("doctor-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 64, 64).map_err(|e| e.to_string())?;
    let mut p = Publisher::create(&key, layout, Default::default()).map_err(|e| e.to_string())?;
    let mut s = Subscriber::connect(&key, "doctor", Mode::Queue, Default::default())
        .map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    p.publish_from(&[1u8; 64 * 64], 0)
        .map_err(|e| e.to_string())?;
    let f = s
        .next_frame(std::time::Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "publish and subscribe work (seq {}, {:?})",
        f.seq(),
        t.elapsed()
    ))
}

/// Dead-peer detection: the publisher's and a subscriber's locks on the
/// segment file must be visible to a third party (here, `stream_status`).
fn liveness_locks() -> std::result::Result<String, String> {
    use cuframes::*;
    let key = format!("doctor-locks-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 64, 64).map_err(|e| e.to_string())?;
    let _p = Publisher::create(&key, layout, Default::default()).map_err(|e| e.to_string())?;
    let s = Subscriber::connect(&key, "doctor", Mode::Queue, Default::default())
        .map_err(|e| e.to_string())?;
    let status = stream_status(&key).map_err(|e| e.to_string())?;
    if status.publisher_alive && status.record_alive(s.record_index()) {
        Ok("segment file locks (F_OFD_SETLK) work: dead processes' slots come back".into())
    } else {
        Err(
            "open-file-description locks do not work here (kernel < 3.15, or a file system \
             without them): dead publishers and subscribers cannot be told from live ones"
                .into(),
        )
    }
}

/// The CUDA driver: version and devices, or why it is unusable.
fn cuda_driver() -> std::result::Result<String, String> {
    let version = cuframes_cuda::driver_version().map_err(|e| {
        format!(
            "{}: GPU streams unavailable (host-memory streams work)",
            e.message()
        )
    })?;
    let devices = cuframes_cuda::device_count().map_err(|e| e.message().to_owned())?;
    Ok(format!(
        "driver {}.{}, {devices} device(s)",
        version / 1000,
        version % 1000 / 10
    ))
}
