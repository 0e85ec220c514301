//! The elements in real gst-launch-1.0 processes, beside the cuframes CLI:
//! byte-exact raw frames, a CLI publisher encoded to a file, kill -9 of
//! either side, encoded H.264 packets. Skipped (with the reason printed)
//! where GStreamer or the plugin cannot load.

mod common;

use common::{checksums, finish, message_field, Env};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// 300 NV12 1280x720 frames from videotestsrc through cuframessink, read
/// in queue mode by cuframessrc (checksums equal to videotestsrc's own,
/// frame by frame) and by the CLI subscriber; the sink wrote zero copy.
#[test]
fn raw_frames_reach_cuframessrc_and_the_cli_byte_exact() {
    let plugin = require_gst!();
    let env = Env::new(plugin, "raw");
    let cli = common::cli();
    if cli.is_none() {
        eprintln!(
            "SKIPPED (CLI part): no cuframes binary; build it with cargo build -p cuframes-cli"
        );
    }
    let caps = "video/x-raw,format=NV12,width=1280,height=720";
    let reference = env.launch(&format!(
        "videotestsrc num-buffers=300 pattern=ball ! {caps} ! checksumsink sync=false"
    ));
    let reader = env.launch(
        "cuframessrc key=raw mode=queue num-buffers=300 timeout=30000 ! checksumsink sync=false",
    );
    let cli_reader = cli.as_ref().map(|exe| {
        env.cli(
            exe,
            &[
                "subscribe",
                "--key",
                "raw",
                "--mode",
                "queue",
                "--frames",
                "300",
                "--timeout-ms",
                "20000",
                "--connect-timeout-ms",
                "20000",
            ],
        )
    });
    let readers = 1 + cli_reader.is_some() as u32;
    let sink = env.launch(&format!(
        "videotestsrc num-buffers=300 pattern=ball ! {caps} ! cuframessink key=raw sync=false wait-subscribers={readers}"
    ));
    let (ok, sink_out) = finish(sink, LIMIT);
    assert!(ok, "sink pipeline failed:\n{sink_out}");
    let (ok, reader_out) = finish(reader, LIMIT);
    assert!(ok, "cuframessrc pipeline failed:\n{reader_out}");
    let (ok, reference_out) = finish(reference, LIMIT);
    assert!(ok, "reference pipeline failed:\n{reference_out}");
    let (got, want) = (checksums(&reader_out), checksums(&reference_out));
    assert_eq!(want.len(), 300, "reference:\n{reference_out}");
    assert_eq!(got.len(), 300, "cuframessrc got {} buffers", got.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "frame {i} differs from videotestsrc's");
    }
    // videotestsrc took the sink's pool: every frame written in place.
    assert_eq!(
        message_field(&sink_out, "cuframessink-stats", "zero-copy-buffers"),
        Some(300),
        "{sink_out}"
    );
    assert_eq!(
        message_field(&sink_out, "cuframessink-stats", "copied-buffers"),
        Some(0)
    );
    if let Some(c) = cli_reader {
        let (ok, out) = finish(c, LIMIT);
        assert!(ok, "cuframes subscribe failed:\n{out}");
        assert!(out.contains("300"), "{out}");
    }
}

/// `cuframes publish --testsrc` read by cuframessrc and encoded into a file
/// that ffprobe (or a GStreamer decode) counts 60 frames in.
#[test]
fn cli_publisher_encoded_to_a_playable_file() {
    let plugin = require_gst!();
    let Some(cli) = common::cli() else {
        eprintln!("SKIPPED: no cuframes binary; build it with cargo build -p cuframes-cli");
        return;
    };
    let env = Env::new(plugin, "enc");
    let (encoder, parser) = match common::h264_encoder() {
        Some(e) => (e, "h264parse"),
        None if common::has_element("avenc_mpeg4") => ("avenc_mpeg4", "mpeg4videoparse"),
        None => {
            eprintln!("SKIPPED: no video encoder (x264enc, openh264enc, avenc_mpeg4)");
            return;
        }
    };
    let file = env.path("clip.mkv");
    let publisher = env.cli(
        &cli,
        &[
            "publish",
            "--key",
            "cam",
            "--testsrc",
            "320x240@30",
            "--seconds",
            "30",
            "--quiet",
        ],
    );
    let reader = env.launch(&format!(
        "cuframessrc key=cam mode=queue num-buffers=60 timeout=20000 ! videoconvert ! {encoder} ! {parser} ! matroskamux ! filesink location={}",
        file.display()
    ));
    let (ok, out) = finish(reader, LIMIT);
    let mut publisher = publisher;
    let _ = publisher.kill();
    let _ = publisher.wait();
    assert!(ok, "reader pipeline failed:\n{out}");
    let frames = common::ffprobe_frames(&file).unwrap_or_else(|| {
        // No ffprobe: decode with GStreamer and count.
        let count = env.launch(&format!(
            "filesrc location={} ! matroskademux ! {parser} ! decodebin ! checksumsink sync=false",
            file.display()
        ));
        let (_, out) = finish(count, LIMIT);
        checksums(&out).len() as u64
    });
    assert_eq!(frames, 60, "{} frames decoded from the file", frames);
}

/// kill -9 of the sink: a reader without reconnect stops with an error
/// naming PublisherGone; one with reconnect=true follows a new sink on the
/// same key (new epoch, caps renegotiated) to the end.
#[test]
fn sink_killed_mid_stream() {
    let plugin = require_gst!();
    let env = Env::new(plugin, "killsink");
    let live =
        "videotestsrc is-live=true ! video/x-raw,format=GRAY8,width=320,height=240,framerate=30/1";
    let plain = env.launch("cuframessrc key=k1 timeout=20000 ! fakesink");
    let follower = env.launch("cuframessrc key=k1 reconnect=true num-buffers=60 ! fakesink");
    let mut sink = env.launch(&format!("{live} ! cuframessink key=k1"));
    std::thread::sleep(Duration::from_millis(1200));
    sink.kill().expect("kill -9 the sink");
    let _ = sink.wait();
    let (ok, out) = finish(plain, Duration::from_secs(15));
    assert!(
        !ok && out.contains("PublisherGone"),
        "reader without reconnect:\n{out}"
    );
    // A new sink on the key, another size: the follower reconnects.
    let sink2 = env.launch(
        "videotestsrc is-live=true num-buffers=90 ! video/x-raw,format=GRAY8,width=160,height=120,framerate=30/1 ! cuframessink key=k1",
    );
    let (ok, out) = finish(follower, LIMIT);
    let _ = finish(sink2, LIMIT);
    assert!(ok, "reader with reconnect=true:\n{out}");
    assert!(
        out.contains("reconnects=(guint64)1"),
        "no reconnection seen:\n{out}"
    );
    assert!(
        out.contains("width\\=\\(int\\)160"),
        "caps not renegotiated:\n{out}"
    );
}

/// kill -9 of a queue-mode reader: the sink goes on to the end without a
/// drop, and the dead reader's record (and slots) are reclaimed.
#[test]
fn reader_killed_mid_stream() {
    let plugin = require_gst!();
    let Some(cli) = common::cli() else {
        eprintln!("SKIPPED: no cuframes binary; build it with cargo build -p cuframes-cli");
        return;
    };
    let env = Env::new(plugin, "killsrc");
    let mut reader = env.launch("cuframessrc key=k2 mode=queue subscriber-name=victim ! fakesink");
    let sink = env.launch(
        "videotestsrc is-live=true num-buffers=120 ! video/x-raw,format=NV12,width=320,height=240,framerate=30/1 ! cuframessink key=k2 wait-subscribers=1",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let stat = env.cli_output(&cli, &["stat", "k2", "--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&stat.stdout).expect("stat --json prints JSON");
    assert_eq!(
        json["subscribers"].as_array().map(Vec::len),
        Some(1),
        "{json}"
    );
    reader.kill().expect("kill -9 the reader");
    let _ = reader.wait();
    let mut reclaimed = false;
    for _ in 0..100 {
        let stat = env.cli_output(&cli, &["stat", "k2", "--json"]);
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&stat.stdout) {
            if json["subscribers"].as_array().is_some_and(Vec::is_empty)
                && json["occupancy"].as_u64().is_some_and(|o| o <= 1)
            {
                reclaimed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        reclaimed,
        "the dead reader's record and slots were not reclaimed"
    );
    let (ok, out) = finish(sink, LIMIT);
    assert!(ok, "sink pipeline failed after its reader died:\n{out}");
    assert_eq!(
        message_field(&out, "cuframessink-stats", "dropped-buffers"),
        Some(0),
        "{out}"
    );
    assert_eq!(
        message_field(&out, "cuframessink-stats", "zero-copy-buffers"),
        Some(120)
    );
}

/// H.264 access units (byte-stream and avc) through cuframessink: the CLI
/// records 100 packets to MP4, cuframessrc decodes 100 frames.
#[test]
fn h264_packets_to_the_cli_recorder_and_cuframessrc() {
    let plugin = require_gst!();
    let Some(encoder) = common::h264_encoder() else {
        eprintln!("SKIPPED: no H.264 encoder (x264enc or openh264enc)");
        return;
    };
    if !common::has_element("avdec_h264") {
        eprintln!("SKIPPED: no avdec_h264 (gstreamer1.0-libav)");
        return;
    }
    let env = Env::new(plugin, "h264");
    let cli = common::cli();
    let ffmpeg = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok();
    for format in ["byte-stream", "avc"] {
        let key = format!("h264-{format}");
        let mp4 = env.path(&format!("{format}.mp4"));
        let recorder = cli.as_ref().filter(|_| ffmpeg).map(|exe| {
            env.cli(
                exe,
                &[
                    "subscribe",
                    "--key",
                    &key,
                    "--record",
                    mp4.to_str().unwrap(),
                    "--frames",
                    "100",
                    "--timeout-ms",
                    "20000",
                    "--connect-timeout-ms",
                    "20000",
                ],
            )
        });
        let decoder = env.launch(&format!(
            "cuframessrc key={key} mode=queue num-buffers=100 timeout=20000 ! h264parse ! avdec_h264 ! checksumsink sync=false"
        ));
        let readers = 1 + recorder.is_some() as u32;
        let sink = env.launch(&format!(
            "videotestsrc num-buffers=100 ! video/x-raw,width=320,height=240 ! {encoder} ! h264parse ! video/x-h264,stream-format={format},alignment=au ! cuframessink key={key} sync=false wait-subscribers={readers}"
        ));
        let (ok, out) = finish(sink, LIMIT);
        assert!(ok, "{format} sink failed:\n{out}");
        assert_eq!(
            message_field(&out, "cuframessink-stats", "copied-buffers"),
            Some(100),
            "{out}"
        );
        let (ok, out) = finish(decoder, LIMIT);
        assert!(ok, "{format} cuframessrc decode failed:\n{out}");
        assert_eq!(
            checksums(&out).len(),
            100,
            "{format}: decoded frames\n{out}"
        );
        match recorder {
            Some(r) => {
                let (ok, out) = finish(r, LIMIT);
                assert!(ok, "{format}: cuframes subscribe --record failed:\n{out}");
                if let Some(n) = common::ffprobe_frames(&mp4) {
                    assert_eq!(n, 100, "{format}: frames in the recording");
                }
            }
            None => eprintln!("SKIPPED ({format}, recorder part): no cuframes binary or no ffmpeg"),
        }
    }
}
