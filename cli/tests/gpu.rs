//! `cuframes publish --cuda` end to end: the CLI puts its test pattern in
//! GPU memory and a CUDA subscriber in this process checks every frame.
//! Runs with `CUFRAMES_GPU=1` (a GPU, or the driver simulator:
//! `scripts/cuda-sim.sh cargo test -p cuframes-cli --test gpu`).

mod common;

use common::*;
use cuframes::{testsrc, ErrorCode, Mode, SubscriberOptions};
use cuframes_cuda::{CudaSubscriber, CudaSubscriberOptions};
use std::time::Duration;

fn enabled() -> bool {
    if std::env::var("CUFRAMES_GPU").as_deref() == Ok("1") {
        return true;
    }
    println!(
        "skipped: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU, or run scripts/cuda-sim.sh"
    );
    false
}

/// Unpacks a tightly packed picture into the slot shape the test pattern
/// is checked in.
fn unpack(layout: &cuframes::FrameLayout, packed: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; layout.slot_bytes as usize];
    for (slot, p, len) in layout.packed_rows() {
        let (slot, p, len) = (slot as usize, p as usize, len as usize);
        image[slot..slot + len].copy_from_slice(&packed[p..p + len]);
    }
    image
}

#[test]
fn publish_cuda_test_pattern_end_to_end() {
    if !enabled() {
        return;
    }
    for export in ["ipc", "vmm-fd"] {
        let key = key("cli-gpu");
        let frames = 90u64;
        let mut p = cuframes()
            .args(["publish", "--key", &key, "--testsrc", "640x360@0", "--cuda"])
            .args(["--frames", &frames.to_string(), "--slots", "4", "--quiet"])
            .args(["--export", export])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let opts = CudaSubscriberOptions {
            ring: SubscriberOptions {
                connect_timeout: Duration::from_secs(20),
                ..Default::default()
            },
            device: None,
        };
        let mut sub = CudaSubscriber::connect(&key, "check", Mode::Queue, opts).unwrap();
        assert_eq!(sub.export_mode().name(), export);
        let layout = *sub.layout();
        // The publisher does not wait for us: we may join a few frames in;
        // from then on a queue reader gets every frame, in order.
        let mut last = None;
        loop {
            match sub.next_frame(Duration::from_secs(20)) {
                Ok(f) => {
                    let image = unpack(&layout, &f.copy_to_host().unwrap());
                    if let Err(d) = testsrc::verify(&layout, &image, f.seq()) {
                        panic!("frame {} damaged: {d:?}", f.seq());
                    }
                    if let Some(l) = last {
                        assert_eq!(f.seq(), l + 1, "a queue reader gets every frame in order");
                    }
                    last = Some(f.seq());
                }
                Err(e) if e.code() == ErrorCode::Closed => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(last, Some(frames));
        // Detach: an ipc publisher waits for that before freeing its memory.
        drop(sub);
        let status = wait_timeout(&mut p, Duration::from_secs(20));
        assert!(status.success(), "{}", stderr_of(&mut p));
    }
}

/// `cuframes subscribe` reads a GPU stream by itself (no flag needed),
/// verifies every frame and dumps one by copying to the host; `ls`/`stat`
/// name the GPU; a device that is not the publisher's is refused.
#[test]
fn subscribe_ls_and_stat_on_a_gpu_stream() {
    if !enabled() {
        return;
    }
    let key = key("cli-gpu-sub");
    let mut p = publisher(
        &key,
        "320x240@240",
        &["--cuda", "--seconds", "60", "--slots", "6"],
    );
    let out = cuframes()
        .args(["subscribe", "--key", &key, "--mode", "queue", "--verify"])
        .args(["--frames", "60", "--report"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = final_report(&text);
    assert_eq!(report["frames"], "60", "{text}");
    assert_eq!(report["bad"], "0", "{text}");

    let dir = shm().join(format!("dump-{key}"));
    let out = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--cuda",
            "--frames",
            "1",
            "--dump",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (320, 240), "IHDR width and height");

    let out = cuframes().args(["stat", &key, "--json"]).output().unwrap();
    let stat: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stat["memory"].as_str().unwrap().starts_with("cuda-"),
        "{stat}"
    );
    let uuid = stat["device_uuid"].as_str().unwrap();
    assert!(uuid.starts_with("GPU-") && uuid.len() == 40, "{uuid}");
    assert_eq!(stat["device_ordinal"], 0);
    let text = cuframes().args(["stat", &key]).output().unwrap().stdout;
    assert!(String::from_utf8_lossy(&text).contains(&format!("device      {uuid}")));
    let ls = cuframes().args(["ls", "--json"]).output().unwrap().stdout;
    let ls: serde_json::Value = serde_json::from_slice(&ls).unwrap();
    let row = ls["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap();
    assert_eq!(row["device_uuid"], uuid);

    if cuframes_cuda::device_count().unwrap() > 1 {
        let out = cuframes()
            .args([
                "subscribe",
                "--key",
                &key,
                "--cuda",
                "--device",
                "1",
                "--frames",
                "1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(9), "Cuda: not the publisher's GPU");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not the publisher's GPU"));
    }
    signal(&p, libc::SIGTERM);
    assert!(wait_timeout(&mut p, Duration::from_secs(20)).success());
}

/// `cuframes publish --input FILE --cuda`: ffmpeg decodes (on the GPU when
/// it can, saying which), frames are uploaded, a queue reader gets them all.
#[test]
fn publish_a_video_file_into_gpu_memory() {
    if !enabled() {
        return;
    }
    if !have_ffmpeg() {
        return;
    }
    let key = key("cli-gpu-file");
    let file = shm().join(format!("{key}.mkv"));
    test_video(&file, "size=320x240:rate=30", &["-frames:v", "45"]);
    let reader = cuframes()
        .args([
            "subscribe",
            "--key",
            &key,
            "--mode",
            "queue",
            "--frames",
            "45",
        ])
        .args(["--connect-timeout-ms", "20000", "--report"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = cuframes()
        .args(["publish", "--key", &key, "--cuda", "--fast", "--input"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("decoding on the GPU") || said.contains("decoding on the CPU"),
        "{said}"
    );
    if cuframes_cuda::is_simulator(0) {
        assert!(
            said.contains("simulator, which has no video decoder"),
            "{said}"
        );
    }
    let got = reader.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{text}");
    assert_eq!(final_report(&text)["frames"], "45", "{text}");
}
