//! The GStreamer benchmark (`gst/examples/gst-bench.rs`, run by
//! `scripts/bench-gstreamer.sh`; docs/gstreamer.md "Performance") in its
//! quick form: every transport row is there, measured or skipped with the
//! reason, the measured ones with figures above zero and nothing lost; the
//! zero-copy rows add up. Shapes, never timings.
//!
//! `cargo test -p gst-plugin-cuframes` builds the example beside the tests
//! (`target/<profile>/examples/gst-bench`); when it is not there (a run
//! filtered with `--test bench`), it is built with cargo first.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The example binary, built if missing or older than its sources.
fn bench_exe() -> PathBuf {
    let profile = common::profile_dir();
    let exe = profile.join("examples/gst-bench");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let sources = std::fs::read_dir(manifest.join("src"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .chain([manifest.join("examples/gst-bench.rs")])
        .filter_map(|p| mtime(&p))
        .max();
    if mtime(&exe).is_none_or(|built| sources.is_some_and(|s| s > built)) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.args([
            "build",
            "-p",
            "gst-plugin-cuframes",
            "--example",
            "gst-bench",
        ]);
        if profile.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let st = c.status().expect("run cargo");
        assert!(st.success(), "cargo build --example gst-bench failed");
    }
    assert!(exe.is_file(), "{} missing", exe.display());
    exe
}

fn rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
            for ch in l.chars() {
                match ch {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            assert_eq!(fields.len(), header.len(), "row {l:?}");
            header.iter().map(|h| h.to_string()).zip(fields).collect()
        })
        .collect()
}

fn num(r: &BTreeMap<String, String>, k: &str) -> f64 {
    r[k].parse().unwrap_or_else(|e| panic!("{k} of {r:?}: {e}"))
}

#[test]
fn quick_bench_measures_every_transport_row() {
    let _plugin = require_gst!();
    let exe = bench_exe();
    let out = std::env::temp_dir().join(format!("cuframes-gst-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .args(["--quick", "--out"])
        .arg(&out)
        // The elements are linked into the example; no other copy.
        .env_remove("GST_PLUGIN_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gst-bench");
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    eprintln!("gst-bench --quick in {:.1?}:\n{stdout}", started.elapsed());
    assert!(
        stdout.contains("transport") && stdout.contains("cores"),
        "{stdout}"
    );

    let csv = std::fs::read_to_string(out.join("gst-bench.csv")).expect("gst-bench.csv");
    let zc = std::fs::read_to_string(out.join("gst-zero-copy.csv")).expect("gst-zero-copy.csv");
    let _ = std::fs::remove_dir_all(&out);
    let rows = rows(&csv);
    let has_shm = common::has_element("shmsink") && common::has_element("shmsrc");
    let has_unixfd = common::has_element("unixfdsink") && common::has_element("unixfdsrc");
    for transport in ["cuframes", "shm", "shm-copy", "unixfd"] {
        for rate in ["60fps", "max"] {
            for consumers in ["1", "4"] {
                let r = rows
                    .iter()
                    .find(|r| {
                        r["transport"] == transport
                            && r["rate"] == rate
                            && r["consumers"] == consumers
                    })
                    .unwrap_or_else(|| panic!("no {transport} {rate} x{consumers} row:\n{csv}"));
                let available = match transport {
                    "cuframes" => true,
                    "unixfd" => has_unixfd,
                    _ => has_shm,
                };
                if !available {
                    assert_eq!(r["status"], "skipped", "{r:?}");
                    assert!(!r["reason"].trim().is_empty(), "{r:?}");
                    continue;
                }
                // shmsink fed from its own allocator has no back-pressure
                // until its area is full, and stalls there (unpaced, or a
                // reader that falls that far behind); the row then says so.
                if transport == "shm" && r["status"] == "failed" {
                    assert!(r["reason"].contains("stalled"), "{r:?}");
                    continue;
                }
                assert_eq!(r["status"], "ok", "{r:?}\n{stdout}");
                for k in [
                    "pub_fps",
                    "sub_fps",
                    "p50_ns",
                    "p99_ns",
                    "max_ns",
                    "latency_samples",
                ] {
                    assert!(num(r, k) > 0.0, "{k} of {r:?}");
                }
                assert!(num(r, "pub_cpu_ns_per_frame") > 0.0, "{r:?}");
                assert!(num(r, "sub_cpu_ns_per_frame") > 0.0, "{r:?}");
                assert!(num(r, "max_ns") >= num(r, "p50_ns"), "{r:?}");
                assert_eq!(r["lost"], "0", "{r:?}");
                if transport == "cuframes" {
                    assert!(r["note"].contains("zero copy"), "{r:?}");
                }
            }
        }
    }
    if !has_unixfd {
        let r = rows.iter().find(|r| r["transport"] == "unixfd").unwrap();
        assert!(r["reason"].contains("unixfdsink"), "{r:?}");
    }

    let zc = self::rows(&zc);
    let upstream = |name: &str| {
        zc.iter()
            .find(|r| r["upstream"] == name)
            .unwrap_or_else(|| panic!("no zero-copy row {name}"))
    };
    for r in &zc {
        match r["status"].as_str() {
            "ok" => {
                let buffers = num(r, "buffers");
                assert!(buffers > 0.0, "{r:?}");
                assert_eq!(
                    num(r, "zero_copy") + num(r, "copied") + num(r, "dropped"),
                    buffers,
                    "{r:?}"
                );
            }
            "skipped" => assert!(!r["reason"].trim().is_empty(), "{r:?}"),
            s => panic!("zero-copy row {s}: {r:?}"),
        }
    }
    // videotestsrc takes the sink's pool: at least that row is zero copy.
    let vts = upstream("videotestsrc (NV12)");
    assert_eq!(vts["status"], "ok");
    assert!(num(vts, "zero_copy") > 0.0, "{vts:?}");
    for name in [
        "videotestsrc (I420) ! videoconvert",
        "filesrc ! h264parse ! avdec_h264 ! videoconvert",
        "filesrc ! h264parse ! openh264dec ! videoconvert",
        "videotestsrc ! queue",
    ] {
        upstream(name);
    }
}
