//! `cuframes ls`, `stat` and `doctor`.

use cuframes::{list_streams, stream_status, Result, StreamStatus};

pub fn ls() -> Result<()> {
    let streams = list_streams();
    if streams.is_empty() {
        println!("no streams in {}", cuframes::shm_dir().display());
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:<6} {:<6} {:>10} {:<9} {:>7} {:>5} {:>5} {:>8}",
        "KEY", "PID", "ALIVE", "FORMAT", "SIZE", "MEMORY", "FPS", "SUBS", "OCC", "DROPS"
    );
    for (key, status) in streams {
        match status {
            Ok(s) => println!("{}", ls_row(&s)),
            Err(e) => println!("{key:<24} unreadable: {e}"),
        }
    }
    Ok(())
}

fn ls_row(s: &StreamStatus) -> String {
    let h = &s.info.header;
    format!(
        "{:<24} {:>8} {:<6} {:<6} {:>10} {:<9} {:>7.1} {:>5} {:>5} {:>8}",
        s.key,
        h.publisher_pid,
        if s.publisher_alive { "yes" } else { "no" },
        s.info.format.name(),
        format!("{}x{}", h.layout.width, h.layout.height),
        s.info.memory.name(),
        s.fps(),
        s.stats.active().count(),
        format!("{}/{}", s.stats.occupancy, s.stats.slot_count),
        s.dropped()
    )
}

pub fn stat(key: &str) -> Result<()> {
    let s = stream_status(key)?;
    let h = &s.info.header;
    let state = match s.stats.state {
        cuframes::core::state::OPEN => "open",
        cuframes::core::state::CLOSED => "closed",
        _ => "starting",
    };
    println!("stream      {key}");
    println!(
        "publisher   pid {} ({}), epoch {:016x}",
        h.publisher_pid,
        if s.publisher_alive { "alive" } else { "dead" },
        h.epoch
    );
    println!("state       {state}");
    println!(
        "frames      {} {}x{}, {} planes, {} bytes/slot",
        s.info.format.name(),
        h.layout.width,
        h.layout.height,
        h.layout.plane_count,
        h.layout.slot_bytes
    );
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
    println!(
        "ring        {} slots, occupancy {}, {} subscriber records, policy {:?}",
        h.slot_count, s.stats.occupancy, h.subscriber_capacity, s.info.policy
    );
    println!(
        "published   {} frames (head seq {}), {:.1} fps",
        s.stats.published,
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
