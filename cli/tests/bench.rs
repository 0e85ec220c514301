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

    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    assert!(svg.contains("<svg"));
    let _ = std::fs::remove_dir_all(&out);
}
