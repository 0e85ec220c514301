//! The loop of `test_cuda bench` (ffi/tests/c/test_cuda.c) through the Rust
//! API, for comparing the per-frame cost of the C GPU calls with the Rust
//! ones: publisher loan + commit, subscriber next + release, on a 1080p
//! NV12 stream in GPU memory, in one thread.
//!
//! `scripts/cuda-sim.sh cargo run --release -p cuframes-ffi --example bench_cuda_rust -- [iterations]`
//!
//! Under the driver simulator this times call overhead only: it is never a
//! GPU figure (docs/cuda-sim.md).

use cuframes::{Mode, PixelFormat};
use cuframes_cuda::{CudaPublisher, CudaSubscriber};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let key = format!("bench-cuda-rust-{}", std::process::id());
    let mut publisher =
        CudaPublisher::create(&key, PixelFormat::Nv12, 1920, 1080, Default::default())?;
    let mut sub = CudaSubscriber::connect(&key, "bench", Mode::Queue, Default::default())?;
    let (mut in_loan, mut in_next, mut sum) = (Duration::ZERO, Duration::ZERO, 0u64);
    for i in -(n / 10)..n {
        if i == 0 {
            (in_loan, in_next) = (Duration::ZERO, Duration::ZERO);
        }
        let a = Instant::now();
        publisher.loan_detached()?;
        publisher.commit_detached(i)?;
        let b = Instant::now();
        let frame = sub.next_frame(Duration::from_secs(1))?;
        sum = sum.wrapping_add(frame.seq() + frame.device_ptr(0));
        frame.release();
        let c = Instant::now();
        in_loan += b - a;
        in_next += c - b;
    }
    let what = if std::env::var("CUFRAMES_GPU_BACKEND").as_deref() == Ok("sim") {
        "simulator: call overhead only, not a GPU figure"
    } else {
        "GPU"
    };
    println!(
        "Rust GPU API, 1080p NV12, {n} frames: {:.0} ns per loan+commit, {:.0} ns per next+release ({what}; checksum {})",
        in_loan.as_nanos() as f64 / n as f64,
        in_next.as_nanos() as f64 / n as f64,
        sum & 0xff
    );
    drop(sub);
    drop(publisher);
    Ok(())
}
