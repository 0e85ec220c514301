//! Micro-benchmarks of the core operations through the real `cuframes`
//! Publisher and Subscriber over shared memory (one process: no wake-ups,
//! no cross-core traffic; see `cuframes bench` for those).
//!
//! `cargo bench -p cuframes-bench`

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use cuframes::{FrameLayout, PixelFormat, Publisher, PublisherOptions, Subscriber};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The private directory the segments go to (removed at the end), so
/// nothing collides with live streams.
fn private_dir() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("cuframes-criterion-{}", std::process::id()))
}

fn shm_dir() {
    if std::env::var_os("CUFRAMES_SHM_DIR").is_none() {
        let dir = private_dir();
        std::fs::create_dir_all(&dir).expect("create shm dir");
        std::env::set_var("CUFRAMES_SHM_DIR", &dir);
    }
}

fn layouts() -> [(&'static str, FrameLayout); 2] {
    [
        (
            "4KiB",
            FrameLayout::new(PixelFormat::Gray8, 64, 64, 64).expect("layout"),
        ),
        (
            "1080p",
            FrameLayout::new(PixelFormat::Nv12, 1920, 1080, 64).expect("layout"),
        ),
    ]
}

fn writer(c: &mut Criterion) {
    shm_dir();
    let mut g = c.benchmark_group("writer loan+commit");
    for (name, layout) in layouts() {
        let key = format!("crit-w-{name}-{}", std::process::id());
        let mut p = Publisher::create(&key, layout, PublisherOptions::default()).expect("create");
        // One newest-only subscriber: commits do the same work as in use.
        let _sub = Subscriber::connect(&key, "s", cuframes::Mode::NewestOnly, Default::default())
            .expect("connect");
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut lease = p.loan().expect("loan");
                lease.data_mut()[0] = 1;
                black_box(lease.commit(0).expect("commit"))
            })
        });
    }
    g.finish();
}

fn reader(c: &mut Criterion) {
    shm_dir();
    let mut g = c.benchmark_group("reader acquire+release");
    for (mode_name, mode) in [
        ("NEWEST_ONLY", cuframes::Mode::NewestOnly),
        ("QUEUE", cuframes::Mode::Queue),
    ] {
        let (name, layout) = layouts()[1];
        let key = format!("crit-r-{mode_name}-{}", std::process::id());
        let mut p = Publisher::create(&key, layout, PublisherOptions::default()).expect("create");
        let mut sub = Subscriber::connect(&key, "s", mode, Default::default()).expect("connect");
        g.bench_function(BenchmarkId::new(mode_name, name), |b| {
            // Only the take and the release are timed; each round commits
            // a fresh frame first (untimed).
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    p.loan().expect("loan").commit(0).expect("commit");
                    let start = Instant::now();
                    let frame = sub.try_next().expect("take").expect("a frame is ready");
                    black_box(frame.data()[0]);
                    frame.release();
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

fn validation(c: &mut Criterion) {
    shm_dir();
    let (_, layout) = layouts()[1];
    let key = format!("crit-v-{}", std::process::id());
    let p = Publisher::create(&key, layout, PublisherOptions::default()).expect("create");
    // A whole real segment image, as a subscriber maps it.
    let path = cuframes::shm_dir().join(format!("cuframes.{key}"));
    let image = std::fs::read(&path).expect("read segment");
    drop(p);
    assert!(cuframes::core::SegmentInfo::validate(&image).is_ok());
    c.bench_function("SegmentInfo::validate (1080p segment)", |b| {
        b.iter(|| black_box(cuframes::core::SegmentInfo::validate(black_box(&image))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = writer, reader, validation
}
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let _ = std::fs::remove_dir_all(private_dir());
}
