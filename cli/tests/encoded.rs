//! Encoded packet streams end to end with a real H.264 file (libx264 via
//! ffmpeg): `publish --encoded`, lossless and late subscribers, recordings
//! that ffmpeg decodes without an error, byte-exact packets, kill -9.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A scratch directory removed at the end.
struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("cuframes-{tag}-{}", key("d")));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// `seconds` of 320x240 25 fps H.264 with a keyframe every `gop` frames
/// and B-frames (so dts differs from pts).
fn h264(dir: &Path, seconds: u32, gop: u32) -> PathBuf {
    h264_at(dir, seconds, gop, "25")
}

/// [`h264`] at frame `rate` (ffmpeg syntax, e.g. `30000/1001`).
fn h264_at(dir: &Path, seconds: u32, gop: u32, rate: &str) -> PathBuf {
    let path = dir.join("src.mp4");
    let gop = gop.to_string();
    let codec = [
        "-c:v", "libx264", "-g", &gop, "-bf", "2", "-pix_fmt", "yuv420p",
    ];
    test_video(
        &path,
        &format!("size=320x240:rate={rate}:duration={seconds}"),
        &codec,
    );
    path
}

fn publish(key: &str, input: &Path, extra: &[&str]) -> Child {
    let child = cuframes()
        .args(["publish", "--key", key, "--encoded", "--quiet", "--input"])
        .arg(input)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(key).is_ok_and(|s| s.publisher_alive)
    });
    child
}

fn subscribe(key: &str, extra: &[&str]) -> Child {
    cuframes()
        .args(["subscribe", "--key", key, "--report", "--verify"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn finish(child: Child) -> (Output, std::collections::HashMap<String, String>) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = final_report(&stdout);
    (out, report)
}

/// ffmpeg's view of a file's video packets: (dts, pts, size, md5 of the
/// data, keyframe), one per packet, in decode order.
fn packets_of(path: &Path) -> Vec<(i64, i64, u64, String, bool)> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-c", "copy", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["packet=flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let keys: Vec<bool> = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.starts_with('K'))
        .collect();
    let rows: Vec<(i64, i64, u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let n = |i: usize| f[i].parse::<i64>().unwrap();
            (n(1), n(2), f[4].parse().unwrap(), f[5].to_owned())
        })
        .collect();
    assert_eq!(rows.len(), keys.len());
    rows.into_iter()
        .zip(keys)
        .map(|((dts, pts, n, md5), k)| (dts, pts, n, md5, k))
        .collect()
}

/// Decodes a file; returns the frames decoded and what ffmpeg said.
fn decode(path: &Path) -> (u64, String) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    // MPEG-TS lists the stream under its program too: the first line tells.
    let text = String::from_utf8_lossy(&probe.stdout).into_owned();
    let frames = text.lines().next().unwrap_or("").trim().parse().unwrap();
    (frames, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A lossless recorder that is there from the start gets every packet of
/// the file byte for byte and tick for tick: the recording, demuxed, has
/// the same packets (dts, pts, size and md5) as the source put through
/// ffmpeg's own MPEG-TS muxer, and it decodes to every frame without a
/// single error.
#[test]
fn lossless_recording_is_byte_exact_and_decodes() {
    if !have_ffmpeg() {
        return;
    }
    let dir = scratch("lossless");
    // 29.97 fps: 3003 ticks a frame, not a multiple of 9 (ns round trip).
    let src = h264_at(&dir.0, 4, 30, "30000/1001");
    let reference = dir.0.join("reference.ts");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&src)
        .args(["-map", "0:v:0", "-c", "copy", "-f", "mpegts"])
        .arg(&reference)
        .status()
        .unwrap();
    assert!(made.success());
    let key = key("lossless");
    // Paused until the recorder is in: --fast with a ring the file fits in,
    // and the recorder connects before the first packet is read.
    let rec = dir.0.join("rec.ts");
    let recorder = subscribe(
        &key,
        &[
            "--mode",
            "queue",
            "--connect-timeout-ms",
            "20000",
            "--record",
            path(&rec),
        ],
    );
    let mut publisher = publish(&key, &src, &["--slots", "16"]);
    let (out, report) = finish(recorder);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_timeout(&mut publisher, Duration::from_secs(20)).success());
    let want = packets_of(&reference);
    assert_eq!(report["packets"], want.len().to_string(), "{report:?}");
    assert_eq!(
        (report["bad"].as_str(), report["dropped"].as_str()),
        ("0", "0")
    );
    assert_eq!(report["first_key"], "1");

    let got = packets_of(&rec);
    assert!(want.len() >= 119, "{} packets", want.len());
    assert_eq!(got, want, "recorded packets differ from the source's");
    let (frames, errors) = decode(&rec);
    assert_eq!((frames, errors.as_str()), (want.len() as u64, ""));
}

/// A subscriber that joins late starts at a keyframe, whatever the mode
/// and whether the ring holds a whole GOP (64 slots) or not (6 slots: it
/// waits for the next keyframe); an mp4 recorded by a late joiner starts
/// with a keyframe and decodes without errors.
#[test]
fn late_joiners_start_at_a_keyframe() {
    if !have_ffmpeg() {
        return;
    }
    let dir = scratch("late");
    let src = h264(&dir.0, 4, 25);
    for slots in ["64", "6"] {
        let key = key("late");
        let mut publisher = publish(&key, &src, &["--slots", slots, "--loop"]);
        std::thread::sleep(Duration::from_millis(1500));
        let newest = subscribe(&key, &["--mode", "newest", "--frames", "30"]);
        let queue = subscribe(&key, &["--mode", "queue", "--frames", "30"]);
        let mp4 = dir.0.join(format!("late-{slots}.mp4"));
        let recorder = subscribe(&key, &["--frames", "40", "--record", path(&mp4)]);
        for sub in [newest, queue, recorder] {
            let (out, report) = finish(sub);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(report["first_key"], "1", "slots {slots}: {report:?}");
            assert_eq!(report["bad"], "0");
        }
        signal(&publisher, libc::SIGTERM);
        assert!(wait_timeout(&mut publisher, Duration::from_secs(10)).success());
        let packets = packets_of(&mp4);
        assert_eq!(packets.len(), 40);
        assert!(packets[0].4, "the recording starts with a keyframe");
        let (frames, errors) = decode(&mp4);
        assert_eq!((frames, errors.as_str()), (40, ""));
    }
}

/// `ls --json` and `stat` describe a packet stream: codec, GOP length, bit
/// rate, largest packet; a frame subscriber is refused with Incompatible.
#[test]
fn listing_and_wrong_kind() {
    if !have_ffmpeg() {
        return;
    }
    let dir = scratch("ls");
    let src = h264(&dir.0, 2, 10);
    let key = key("ls");
    let mut publisher = publish(&key, &src, &["--loop", "--max-packet", "256K"]);
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key).is_ok_and(|s| s.stats.gop == 10 && s.stats.bitrate_bps > 0)
    });
    let out = cuframes().args(["stat", &key, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["content"], "packets");
    assert_eq!(v["codec"], "h264");
    assert_eq!(v["format"], "h264");
    assert_eq!(v["gop"], 10);
    assert_eq!(v["max_packet"], 256 * 1024);
    assert!(v["extradata_bytes"].as_u64().unwrap() > 8, "SPS and PPS");
    assert!(v["bitrate_bps"].as_u64().unwrap() > 1000);
    let text = cuframes().args(["stat", &key]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("packets     h264") && text.contains("GOP 10 packets"),
        "{text}"
    );

    // A frame reader (the Rust API) is refused with a clear Incompatible.
    let e = cuframes::Subscriber::connect(
        &key,
        "frames",
        cuframes::Mode::NewestOnly,
        Default::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), cuframes::ErrorCode::Incompatible);
    assert!(e.to_string().contains("packet"), "{e}");
    signal(&publisher, libc::SIGTERM);
    assert!(wait_timeout(&mut publisher, Duration::from_secs(10)).success());

    // And the reverse: a packet reader on a frame stream.
    let frames = common::key("frames");
    let mut p = publisher_frames(&frames);
    let e = cuframes::PacketSubscriber::connect(
        &frames,
        "p",
        cuframes::Mode::Queue,
        Default::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), cuframes::ErrorCode::Incompatible);
    signal(&p, libc::SIGTERM);
    assert!(wait_timeout(&mut p, Duration::from_secs(10)).success());
}

fn publisher_frames(key: &str) -> Child {
    common::publisher(key, "64x48@100", &[])
}

/// A packet bigger than --max-packet stops the publisher with a clear
/// InvalidArgument (exit status 5) naming the option.
#[test]
fn oversize_packet_is_a_clear_error() {
    if !have_ffmpeg() {
        return;
    }
    let dir = scratch("big");
    let src = h264(&dir.0, 1, 25);
    let out = cuframes()
        .args([
            "publish",
            "--key",
            &key("big"),
            "--encoded",
            "--fast",
            "--max-packet",
            "64",
        ])
        .arg("--input")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("larger than") && err.contains("--max-packet"),
        "{err}"
    );
}

/// kill -9 of recorders and verifying readers while they hold packets,
/// round after round: the publisher goes on, nothing stays held, and a
/// survivor's stream stays decodable. Then kill -9 of the publisher: the
/// recorder ends with PublisherGone (4) and its file still decodes.
#[test]
fn kill9_chaos() {
    if !have_ffmpeg() {
        return;
    }
    let rounds: u64 = std::env::var("CUFRAMES_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(30, |r: u64| (r / 5).max(10));
    let dir = scratch("chaos");
    let src = h264(&dir.0, 4, 25);
    let key = key("chaos");
    let mut publisher = publish(&key, &src, &["--loop", "--slots", "32"]);
    let mp4 = dir.0.join("survivor.mkv");
    let survivor = subscribe(
        &key,
        &["--mode", "queue", "--hold-ms", "1", "--record", path(&mp4)],
    );
    let mut rng = Rng(0x51ed_2701 ^ u64::from(std::process::id()));
    for _ in 0..rounds {
        let mode = ["newest", "queue"][rng.below(2) as usize];
        let hold = rng.below(40).to_string();
        let mut victim = cuframes()
            .args([
                "subscribe",
                "--key",
                &key,
                "--mode",
                mode,
                "--verify",
                "--hold-ms",
                &hold,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + rng.below(150)));
        signal(&victim, libc::SIGKILL);
        let _ = victim.wait();
    }
    // The publisher sweeps dead records within a heartbeat or two.
    wait_for(Duration::from_secs(10), || {
        let s = cuframes::stream_status(&key).unwrap();
        let live = s.stats.active().filter(|r| s.record_alive(r.index)).count();
        live == 1 && s.stats.active().count() == 1 && s.stats.occupancy <= 2
    });
    let before = cuframes::stream_status(&key).unwrap().stats.published;
    std::thread::sleep(Duration::from_millis(300));
    assert!(cuframes::stream_status(&key).unwrap().stats.published > before);

    signal(&publisher, libc::SIGKILL);
    let _ = publisher.wait();
    let (out, report) = finish(survivor);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (report["bad"].as_str(), report["first_key"].as_str()),
        ("0", "1")
    );
    let packets: u64 = report["packets"].parse().unwrap();
    assert!(packets > 20, "{report:?}");
    let (frames, errors) = decode(&mp4);
    assert_eq!((frames, errors.as_str()), (packets, ""));
}

/// Packets a file cannot hold make `--record` fail at once with a clear
/// InvalidArgument (5) naming the packet, ffmpeg included (no hang on its
/// open pipes): here length-prefixed packets without the avcC record that
/// would say so. An empty packet is skipped.
#[test]
fn record_refuses_packets_it_cannot_remux() {
    if !have_ffmpeg() {
        return;
    }
    let dir = scratch("refuse");
    let key = key("refuse");
    let stream = cuframes::PacketStream::new(cuframes::Codec::H264, 4096);
    let mut p = cuframes::PacketPublisher::create(&key, &stream, Default::default()).unwrap();
    let key_meta = cuframes::PacketMeta {
        flags: cuframes::packet::KEY,
        ..Default::default()
    };
    p.publish(b"", &key_meta).unwrap();
    p.publish(&[0, 0, 0, 2, 0x65, 0x88], &key_meta).unwrap();
    let out = dir.0.join("refused.mp4");
    let mut rec = subscribe(&key, &["--mode", "queue", "--record", path(&out)]);
    let status = wait_timeout(&mut rec, Duration::from_secs(20));
    let out = rec.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("packet 2") && err.contains("Annex B"), "{err}");
}
