//! The loop of `bench_next.c` through the Rust API, for comparing per-frame
//! costs: publisher loan + commit, subscriber next + read one byte +
//! release, on a 1080p NV12 stream in one thread.
//!
//! `cargo run --release -p cuframes-ffi --example bench_rust -- [iterations]`

use cuframes::{FrameLayout, Mode, PixelFormat, Publisher, Subscriber};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: i64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let key = format!("bench-rust-{}", std::process::id());
    let layout = FrameLayout::new(PixelFormat::Nv12, 1920, 1080, 64)?;
    let mut publisher = Publisher::create(&key, layout, Default::default())?;
    let mut sub = Subscriber::connect(&key, "bench", Mode::Queue, Default::default())?;
    let (mut sum, mut in_next, mut t0) = (0u64, Duration::ZERO, Instant::now());
    for i in -(n / 10)..n {
        if i == 0 {
            (in_next, t0) = (Duration::ZERO, Instant::now());
        }
        let mut lease = publisher.loan()?;
        lease.plane_mut(0)[0] = i as u8;
        lease.commit(i)?;
        let a = Instant::now();
        let frame = sub.next_frame(Duration::ZERO)?;
        sum += u64::from(frame.plane(0)[0]) + frame.seq();
        frame.release();
        in_next += a.elapsed();
    }
    let total = t0.elapsed();
    println!(
        "Rust API, 1080p NV12, {n} frames: {:.0} ns per loan+commit+next+release cycle, {:.0} ns per next+release (checksum {})",
        total.as_nanos() as f64 / n as f64,
        in_next.as_nanos() as f64 / n as f64,
        sum & 0xff
    );
    Ok(())
}
