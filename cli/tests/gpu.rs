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
        let mut seen = 0u64;
        loop {
            match sub.next_frame(Duration::from_secs(20)) {
                Ok(f) => {
                    let image = unpack(&layout, &f.copy_to_host().unwrap());
                    if let Err(d) = testsrc::verify(&layout, &image, f.seq()) {
                        panic!("frame {} damaged: {d:?}", f.seq());
                    }
                    seen += 1;
                    assert_eq!(f.seq(), seen, "a queue reader gets every frame in order");
                }
                Err(e) if e.code() == ErrorCode::Closed => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen, frames);
        // Detach: an ipc publisher waits for that before freeing its memory.
        drop(sub);
        let status = wait_timeout(&mut p, Duration::from_secs(20));
        assert!(status.success(), "{}", stderr_of(&mut p));
    }
}
