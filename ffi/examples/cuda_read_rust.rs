//! A Rust subscriber (`cuframes_cuda::CudaSubscriber`) reading a stream
//! published through the C ABI: scripts/test-c.sh runs it against
//! `test_cuda publish KEY N MODE 1` (ffi/tests/c/test_cuda.c) under the
//! driver simulator and checks every byte of every frame.
//!
//! `cuda_read_rust KEY N`: reads N frames in queue mode, until the stream
//! closes; exits non-zero on a missing or wrong frame.

use cuframes::Mode;
use cuframes_cuda::{CudaSubscriber, CudaSubscriberOptions};
use std::time::Duration;

/// The packed NV12 frame `seq` of test_cuda.c's `fill_packed`.
fn expected(seq: u64, width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * height * 3 / 2);
    for (plane, rows) in [(0u64, height), (1, height / 2)] {
        for r in 0..rows as u64 {
            for c in 0..width as u64 {
                out.push((seq * 31 + plane * 7 + r * 3 + c) as u8);
            }
        }
    }
    out[..8].copy_from_slice(&seq.to_ne_bytes());
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(key), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: cuda_read_rust KEY N".into());
    };
    let n: u64 = n.parse()?;
    let mut options = CudaSubscriberOptions::default();
    options.ring.connect_timeout = Duration::from_secs(30);
    let mut sub = CudaSubscriber::connect(&key, "rust-reader", Mode::Queue, options)?;
    let mut last = 0;
    loop {
        let frame = match sub.next_frame(Duration::from_secs(30)) {
            Ok(f) => f,
            Err(e) if e.code() == cuframes::ErrorCode::Closed => break,
            Err(e) => return Err(e.into()),
        };
        let seq = frame.seq();
        if seq != last + 1 {
            return Err(format!("seq {seq} after {last}").into());
        }
        let bytes = frame.copy_to_host()?;
        let want = expected(seq, frame.width() as usize, frame.height() as usize);
        if let Some(i) = bytes.iter().zip(&want).position(|(a, b)| a != b) {
            return Err(format!("frame {seq} differs at byte {i}").into());
        }
        if frame.pts_ns() != seq as i64 * 1000 {
            return Err(format!("frame {seq} has pts {}", frame.pts_ns()).into());
        }
        last = seq;
    }
    if last != n {
        return Err(format!("read {last} of {n} frames").into());
    }
    println!(
        "Rust subscriber ({}): {n} frames of a C publisher, every byte verified",
        sub.export_mode()
    );
    Ok(())
}
