//! `cuframes bench`: the smallest run (the hidden `--smoke` set: 4 KiB, one
//! subscriber, every peer) writes a CSV with measured rows for cuframes
//! and the unix-socket baseline, a reason on every skipped row, and an SVG.
//! Only shapes are asserted, never timings.

mod common;
use common::*;
use std::collections::BTreeMap;

fn rows(csv: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .map(|l| {
            // Split on commas outside quotes.
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

#[test]
fn smoke_run_writes_csv_and_svg() {
    let out = std::env::temp_dir().join(format!("cuframes-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = cuframes()
        .args(["bench", "--smoke", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("peer") && stdout.contains("unix-socket"),
        "{stdout}"
    );

    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    let rows = rows(&csv);
    let fps = |r: &BTreeMap<String, String>| r["sub_fps"].parse::<f64>().unwrap();
    for peer in ["cuframes", "unix-socket"] {
        let measured: Vec<_> = rows
            .iter()
            .filter(|r| r["peer"] == peer && r["status"] == "ok")
            .collect();
        assert!(!measured.is_empty(), "no measured {peer} row:\n{csv}");
        for r in measured {
            assert!(fps(r) > 0.0, "{r:?}");
            assert!(r["p50_ns"].parse::<u64>().unwrap() > 0, "{r:?}");
        }
    }
    // Both wake-up modes of cuframes are there, labelled.
    for wake in ["busy-poll", "blocking"] {
        assert!(
            rows.iter()
                .any(|r| r["peer"] == "cuframes" && r["wake"] == wake),
            "{csv}"
        );
    }
    // Every peer shows up, measured or skipped with a reason.
    for peer in [
        "cuframes",
        "iceoryx2",
        "unix-socket",
        "python-shm",
        "python-cuframes",
        "cuframes-cuda",
        "torch-mp",
    ] {
        assert!(
            rows.iter().any(|r| r["peer"] == peer),
            "{peer} missing:\n{csv}"
        );
    }
    for r in rows.iter().filter(|r| r["status"] == "skipped") {
        assert!(
            !r["reason"].trim().is_empty(),
            "skipped without reason: {r:?}"
        );
    }
    assert!(rows.iter().all(|r| r["status"] != "failed"), "{csv}");
    assert!(rows.iter().any(|r| r["status"] == "reference"), "{csv}");
    // The floors, measured between two processes, and compared with.
    for floor in [
        "ref: busy-poll floor",
        "ref: blocking floor",
        "ref: cache-line ping-pong",
    ] {
        let r = rows
            .iter()
            .find(|r| r["peer"].starts_with(floor))
            .unwrap_or_else(|| panic!("{floor} missing:\n{csv}"));
        assert!(r["p50_ns"].parse::<u64>().unwrap() > 0, "{r:?}");
    }
    for r in rows
        .iter()
        .filter(|r| r["peer"] == "cuframes" && r["status"] == "ok" && r["work"] == "-")
    {
        assert!(r["floor_ns"].parse::<u64>().unwrap() > 0, "{r:?}");
        assert!(r["versus"].ends_with('x'), "{r:?}");
    }
    // Consumer rows: every byte checksummed and checked, nothing damaged,
    // compared with one core's read bandwidth.
    let sums: Vec<_> = rows
        .iter()
        .filter(|r| r["work"] == "sum" && r["status"] == "ok")
        .collect();
    for peer in ["cuframes", "unix-socket"] {
        assert!(sums.iter().any(|r| r["peer"] == peer), "{peer}:\n{csv}");
    }
    for r in sums {
        assert_eq!(r["damaged"], "0", "{r:?}");
        assert!(r["read_gbps"].parse::<f64>().unwrap() > 0.0, "{r:?}");
        assert!(r["versus"].ends_with('%'), "{r:?}");
    }

    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.contains("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `cuframes bench --smoke --peers cuframes-cuda,torch-mp` (the GPU
/// rows only, and the reference rows) and returns its CSV rows and table.
fn gpu_run() -> (Vec<BTreeMap<String, String>>, String) {
    let out = std::env::temp_dir().join(format!("cuframes-bench-gpu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let started = std::time::Instant::now();
    let run = cuframes()
        .args([
            "bench",
            "--smoke",
            "--peers",
            "cuframes-cuda,torch-mp",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    eprintln!("GPU rows in {:.1?}:\n{stdout}", started.elapsed());
    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let rows = rows(&csv);
    // Only the chosen peers (and the reference rows), each listed.
    for r in &rows {
        assert!(
            ["cuframes-cuda", "torch-mp"].contains(&r["peer"].as_str())
                || r["status"] == "reference",
            "{r:?}"
        );
    }
    for peer in ["cuframes-cuda", "torch-mp"] {
        assert!(
            rows.iter().any(|r| r["peer"] == peer),
            "{peer} missing:\n{csv}"
        );
    }
    (rows, stdout)
}

/// Without a CUDA driver both GPU peers are listed, skipped, with the
/// reason; no figure is made up.
#[test]
fn gpu_rows_without_a_driver_are_skipped_with_the_reason() {
    if cuframes_cuda::is_available() {
        eprintln!("skipped: this machine has a CUDA driver (see gpu_rows_run_on_a_gpu)");
        return;
    }
    let (rows, table) = gpu_run();
    for r in rows.iter().filter(|r| r["status"] != "reference") {
        assert_eq!(r["status"], "skipped", "{r:?}");
        assert_eq!(r["p50_ns"], "0", "{r:?}");
        assert_eq!(r["sub_fps"], "0.0", "{r:?}");
    }
    let reason = |peer: &str| -> String {
        rows.iter()
            .find(|r| r["peer"] == peer)
            .map(|r| r["reason"].clone())
            .unwrap()
    };
    let cuda = reason("cuframes-cuda");
    assert!(
        cuda.contains("libcuda") || cuda.contains("driver"),
        "{cuda}"
    );
    let torch = reason("torch-mp");
    assert!(torch.contains("torch"), "{torch}");
    assert!(table.contains("skipped: "), "{table}");
}

/// With a driver (`CUFRAMES_GPU=1`, a GPU or `scripts/cuda-sim.sh`) the
/// cuframes-cuda rows are measured; on the simulator they are labelled
/// as such (status `sim`, the note, the table's footnote) and never `ok`.
#[test]
fn gpu_rows_run_on_a_gpu() {
    if std::env::var("CUFRAMES_GPU").as_deref() != Ok("1") {
        eprintln!("skipped: set CUFRAMES_GPU=1 on a machine with a CUDA driver (or the simulator)");
        return;
    }
    let (rows, table) = gpu_run();
    let cuda: Vec<_> = rows
        .iter()
        .filter(|r| r["peer"] == "cuframes-cuda")
        .collect();
    for mode in ["newest", "queue"] {
        assert!(cuda.iter().any(|r| r["mode"] == mode), "{table}");
    }
    let sim_expected = std::env::var("CUFRAMES_GPU_BACKEND").as_deref() == Ok("sim");
    for r in &cuda {
        assert!(
            ["ok", "sim"].contains(&r["status"].as_str()),
            "{r:?}\n{table}"
        );
        assert!(r["sub_fps"].parse::<f64>().unwrap() > 0.0, "{r:?}");
        assert!(r["p50_ns"].parse::<u64>().unwrap() > 0, "{r:?}");
        assert!(r["latency_samples"].parse::<u64>().unwrap() > 0, "{r:?}");
        if sim_expected {
            assert_eq!(
                r["status"], "sim",
                "a simulator figure passed as a GPU one: {r:?}"
            );
        }
        if r["status"] == "sim" {
            assert!(
                r["reason"].contains("simulator") && r["reason"].contains("not a GPU figure"),
                "{r:?}"
            );
            assert!(
                table.contains("[sim]") && table.contains("driver simulator, not a GPU"),
                "{table}"
            );
        }
    }
    // torch-mp runs only with torch on a real GPU; otherwise it says why.
    for r in rows.iter().filter(|r| r["peer"] == "torch-mp") {
        match r["status"].as_str() {
            "ok" => assert!(!sim_expected, "{r:?}"),
            "skipped" => assert!(!r["reason"].trim().is_empty(), "{r:?}"),
            s => panic!("torch-mp {s}: {r:?}"),
        }
    }
}

/// `cuframes bench --smoke --packets`: only the encoded-packet rows (and
/// the reference rows), cuframes and the unix socket side by side. Both
/// streams to 1 and 4 lossless subscribers are measured (packets/s and
/// latency above zero, nothing lost), and every join case took a keyframe
/// first (a joiner that gets anything else fails its row) within the GOP
/// plus a generous slack. Shapes, not timings.
#[test]
fn packet_rows_are_measured_side_by_side() {
    let out = std::env::temp_dir().join(format!("cuframes-bench-pkt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = cuframes()
        .args(["bench", "--smoke", "--packets", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let rows = rows(&csv);
    let num = |r: &BTreeMap<String, String>, k: &str| -> f64 {
        r[k].parse().unwrap_or_else(|e| panic!("{k} of {r:?}: {e}"))
    };
    // Packet rows only: no frame workload, no frame-only peer.
    for r in rows.iter().filter(|r| r["status"] != "reference") {
        assert!(
            r["payload"].starts_with("pkt-") || r["payload"].starts_with("join-"),
            "{r:?}"
        );
        assert!(
            ["cuframes", "unix-socket"].contains(&r["peer"].as_str()),
            "{r:?}"
        );
        assert_eq!(r["status"], "ok", "{r:?}\n{stdout}");
    }
    let row = |peer: &str, payload: &str, subs: &str| {
        rows.iter()
            .find(|r| r["peer"] == peer && r["payload"] == payload && r["subscribers"] == subs)
            .unwrap_or_else(|| panic!("no {peer} {payload} x{subs} row:\n{csv}"))
    };
    for payload in ["pkt-4k-20mbit", "pkt-1mbit"] {
        for subs in ["1", "4"] {
            for peer in ["cuframes", "unix-socket"] {
                let r = row(peer, payload, subs);
                assert!(num(r, "sub_fps") > 0.0, "{r:?}");
                assert!(num(r, "pub_fps") > 0.0, "{r:?}");
                assert!(num(r, "p50_ns") > 0.0, "{r:?}");
                assert!(num(r, "max_ns") >= num(r, "p50_ns"), "{r:?}");
                assert!(num(r, "latency_samples") > 0.0, "{r:?}");
                assert_eq!(r["lost"], "0", "{r:?}");
                assert_eq!(
                    (r["mode"].as_str(), r["wake"].as_str()),
                    ("queue", "blocking")
                );
                assert!(r["reason"].contains("packets/s"), "{r:?}");
            }
        }
    }
    // Join time: connect to the first packet, a keyframe. Bounded by the
    // GOP (0.5 s, 2 s) for either peer: cuframes finds the keyframe in
    // the 64-slot ring or, in the 16-slot one, waits for the next; the
    // socket always waits for the next.
    for (payload, gop_ns) in [("join-gop15", 500e6), ("join-gop60-ring16", 2e9)] {
        for peer in ["cuframes", "unix-socket"] {
            let r = row(peer, payload, "1");
            assert!(num(r, "latency_samples") > 0.0, "{r:?}");
            assert!(num(r, "p50_ns") > 0.0, "{r:?}");
            assert!(num(r, "max_ns") >= num(r, "p50_ns"), "{r:?}");
            assert!(num(r, "max_ns") <= gop_ns + 10e9, "{r:?}");
            assert!(r["reason"].contains("GOP"), "{r:?}");
        }
    }
    assert!(stdout.contains("join-gop60-ring16"), "{stdout}");
}
