//! Rows and their three renderings: the table, the CSV, the SVG plot.

use crate::reference::Reference;
use crate::spec::Workload;
use std::fmt::Write as _;
use std::path::Path;

/// Measured figures of one case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Handoff latency quantiles (worst subscriber), nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// The largest sample.
    pub max_ns: u64,
    /// Latency samples per subscriber (fewest).
    pub samples: u64,
    /// Frames/s the publisher sustained in the throughput phase.
    pub pub_fps: f64,
    /// Frames/s each subscriber received (mean).
    pub sub_fps: f64,
    /// Publisher CPU per published frame, nanoseconds.
    pub pub_cpu_ns: u64,
    /// Subscriber CPU per received frame (mean), nanoseconds.
    pub sub_cpu_ns: u64,
    /// Subscriber VmRSS (mean), KiB.
    pub sub_rss_kib: u64,
    /// Subscriber RssShmem (mean), KiB.
    pub sub_shmem_kib: u64,
    /// Frames a queue (or real-time) subscriber missed (sum).
    pub lost: u64,
    /// Frames that did not hold what the publisher wrote (sum; a failed
    /// row if any).
    pub damaged: u64,
    /// The p50 of this row's handoff floor (same wake-up, same cadence),
    /// nanoseconds; 0 where none applies.
    pub floor_ns: u64,
    /// One core's read bandwidth over frames of this row's size, GB/s; 0
    /// unless a consumer row.
    pub read_ref_gbps: f64,
}

impl Figures {
    /// Bytes all subscribers of a consumer row read per nanosecond (GB/s).
    pub fn read_gbps(&self, bytes: usize, subscribers: usize) -> f64 {
        self.sub_fps * (bytes * subscribers) as f64 / 1e9
    }
}

/// One line of the results.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Peer name.
    pub peer: String,
    /// Wake-up mode name.
    pub wake: String,
    /// Delivery mode name.
    pub mode: String,
    /// Workload name.
    pub payload: String,
    /// What each subscriber did with a frame (`-`: nothing, `sum`, `rgb`).
    pub work: String,
    /// Payload bytes (0 for "all").
    pub bytes: usize,
    /// Subscriber processes (0 for "all").
    pub subscribers: usize,
    /// `ok`, [`SIM`], `skipped`, `failed` or `reference`.
    pub status: String,
    /// Why skipped or failed; a note for references and measured rows
    /// (the GPU and export mode of GPU rows; the simulator label).
    pub reason: String,
    /// The figures (zero unless `ok`, [`SIM`] or `reference`).
    pub figures: Figures,
}

impl Row {
    /// A reference measurement as a row (`skipped`, with the reason, if it
    /// could not be measured here).
    pub fn reference(r: &Reference) -> Self {
        Row {
            peer: format!("ref: {}", r.name),
            wake: "-".into(),
            mode: "-".into(),
            payload: "-".into(),
            work: "-".into(),
            bytes: 0,
            subscribers: 0,
            status: if r.skip_reason().is_some() {
                "skipped"
            } else {
                "reference"
            }
            .into(),
            reason: r.skip_reason().unwrap_or(&r.note).to_owned(),
            figures: Figures {
                p50_ns: r.p50_ns,
                p99_ns: r.p99_ns,
                p999_ns: r.p999_ns,
                ..Default::default()
            },
        }
    }
}

/// Status of a GPU row measured on the CUDA driver simulator: its figures
/// are the harness's and the simulator's call overhead, not a GPU's. The
/// table prints them with [`SIM_FOOTNOTE`]; the plot leaves them out.
pub const SIM: &str = "sim";

/// Printed under a table that has [`SIM`] rows.
pub const SIM_FOOTNOTE: &str = "[sim] measured on the cuframes CUDA driver simulator, not a GPU: \
the figures are the harness's and the simulator's call overhead only, never GPU figures \
(status `sim` in bench.csv).";

/// Nanoseconds as a short duration.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        10_000_000..=999_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

fn subs(n: usize) -> String {
    if n == 0 {
        "all".into()
    } else {
        n.to_string()
    }
}

/// Whether a row measures join time (its latencies are connect to first
/// packet; it has no rates).
pub fn is_join(r: &Row) -> bool {
    Workload::by_name(&r.payload).is_some_and(|w| w.is_join())
}

/// Whether a row moves encoded packets (its rates are packets/s).
pub fn is_packets(r: &Row) -> bool {
    Workload::by_name(&r.payload).is_some_and(|w| w.packets.is_some())
}

/// What a row is compared with, as printed: a handoff row's p50 over its
/// floor (`1.4x`), a consumer row's read rate over one core's read
/// bandwidth (`63%`), else `-`.
pub fn versus(r: &Row) -> String {
    let f = &r.figures;
    if f.floor_ns > 0 && f.p50_ns > 0 {
        format!("{:.1}x", f.p50_ns as f64 / f.floor_ns as f64)
    } else if f.read_ref_gbps > 0.0 {
        format!(
            "{:.0}%",
            100.0 * f.read_gbps(r.bytes, r.subscribers) / f.read_ref_gbps
        )
    } else {
        "-".into()
    }
}

/// The table printed on stdout. Packet rows count packets where frame
/// rows count frames; join rows have latencies only. `GB/s` is what the
/// subscribers of a consumer row read together; `vs ref` compares a row
/// with its reference ([`versus`]).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    // The size column fits the longest workload name (`join-gop60-ring16`).
    let w = rows.iter().map(|r| r.payload.len()).fold(6, usize::max);
    let head = |r: &Row| {
        format!(
            "{:<15} {:<9} {:<6} {:<w$} {:<4} {:>4}",
            r.peer,
            r.wake,
            r.mode,
            r.payload,
            r.work,
            subs(r.subscribers)
        )
    };
    let _ = writeln!(
        s,
        "{:<15} {:<9} {:<6} {:<w$} {:<4} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>9} {:>9} {:>8} {:>8}  note",
        "peer", "wake", "mode", "size", "work", "subs", "p50", "p99", "p99.9", "pub fps",
        "sub fps", "GB/s", "vs ref", "pub cpu/f", "sub cpu/f", "sub RSS", "sub shm"
    );
    for r in rows {
        let f = &r.figures;
        match r.status.as_str() {
            "ok" if is_join(r) => {
                let _ = writeln!(
                    s,
                    "{} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>6} {:>9} {:>9} {:>8} {:>8}  {}",
                    head(r),
                    human_ns(f.p50_ns),
                    human_ns(f.p99_ns),
                    human_ns(f.p999_ns),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    r.reason
                );
            }
            st @ ("ok" | SIM) => {
                let mut note: Vec<String> = Vec::new();
                if st == SIM {
                    note.push("[sim]".into());
                }
                if f.lost > 0 {
                    note.push(format!("{} lost", f.lost));
                }
                if !r.reason.is_empty() {
                    note.push(r.reason.clone());
                }
                let gbps = if f.read_ref_gbps > 0.0 {
                    format!("{:.1}", f.read_gbps(r.bytes, r.subscribers))
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    s,
                    "{} {:>9} {:>9} {:>9} {:>8.0} {:>8.0} {:>6} {:>6} {:>9} {:>9} {:>6}Mi {:>6}Mi  {}",
                    head(r),
                    human_ns(f.p50_ns),
                    human_ns(f.p99_ns),
                    human_ns(f.p999_ns),
                    f.pub_fps,
                    f.sub_fps,
                    gbps,
                    versus(r),
                    human_ns(f.pub_cpu_ns),
                    human_ns(f.sub_cpu_ns),
                    f.sub_rss_kib / 1024,
                    f.sub_shmem_kib / 1024,
                    note.join("; ")
                );
            }
            "reference" => {
                let _ = writeln!(
                    s,
                    "{:<width$} {:>9} {:>9} {:>9}  {}",
                    r.peer,
                    human_ns(f.p50_ns),
                    human_ns(f.p99_ns),
                    human_ns(f.p999_ns),
                    r.reason,
                    // The width of the columns before p50.
                    width = 43 + w
                );
            }
            "skipped" if r.peer.starts_with("ref: ") => {
                let _ = writeln!(s, "{}  skipped: {}", r.peer, r.reason);
            }
            status => {
                let _ = writeln!(s, "{} {status}: {}", head(r), r.reason);
            }
        }
    }
    if rows.iter().any(|r| r.status == SIM) {
        let _ = writeln!(s, "{SIM_FOOTNOTE}");
    }
    s
}

/// CSV header.
pub const CSV_HEADER: &str = "peer,wake,mode,payload,payload_bytes,subscribers,status,reason,p50_ns,p99_ns,p999_ns,latency_samples,pub_fps,sub_fps,pub_cpu_ns_per_frame,sub_cpu_ns_per_frame,sub_rss_kib,sub_rss_shmem_kib,lost,max_ns,work,read_gbps,floor_ns,read_ref_gbps,versus,damaged";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The rows as CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let f = &r.figures;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.1},{},{},{},{},{},{},{},{},{},{:.2},{},{}",
            csv_field(&r.peer),
            r.wake,
            r.mode,
            r.payload,
            r.bytes,
            r.subscribers,
            r.status,
            csv_field(&r.reason),
            f.p50_ns,
            f.p99_ns,
            f.p999_ns,
            f.samples,
            f.pub_fps,
            f.sub_fps,
            f.pub_cpu_ns,
            f.sub_cpu_ns,
            f.sub_rss_kib,
            f.sub_shmem_kib,
            f.lost,
            f.max_ns,
            r.work,
            if f.read_ref_gbps > 0.0 {
                format!("{:.2}", f.read_gbps(r.bytes, r.subscribers))
            } else {
                String::new()
            },
            f.floor_ns,
            f.read_ref_gbps,
            versus(r),
            f.damaged
        );
    }
    s
}

/// Plots handoff latency p50 (x) against received frames/s (y), both
/// log scale, one colour per peer and wake-up mode, a marker per payload.
/// Only `ok` handoff rows of frames: simulator figures ([`SIM`]) are not
/// plotted, nor packet rows (packets/s is not frames/s, join time not a
/// handoff), nor consumer rows (their rate is the work's).
pub fn svg(rows: &[Row], path: &Path, title: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.status == "ok" && r.figures.p50_ns > 0 && r.figures.sub_fps > 0.0)
        .filter(|r| !is_packets(r) && r.work == "-")
        .collect();
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (mut x0, mut x1, mut y0, mut y1) = (1.0f64, 1e3f64, 1.0f64, 1e4f64);
    for r in &ok {
        let (x, y) = (r.figures.p50_ns as f64 / 1e3, r.figures.sub_fps);
        (x0, x1) = (x0.min(x / 2.0), x1.max(x * 2.0));
        (y0, y1) = (y0.min(y / 2.0), y1.max(y * 2.0));
    }
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("handoff latency p50 (us, log)")
        .y_desc("frames/s per subscriber (log)")
        .draw()
        .map_err(|x| e(&x))?;
    let mut series: Vec<(String, Vec<&Row>)> = Vec::new();
    for r in &ok {
        let key = format!("{} {}", r.peer, r.wake);
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => series.push((key, vec![r])),
        }
    }
    for (i, (key, rs)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64, &str)> = rs
            .iter()
            .map(|r| {
                (
                    r.figures.p50_ns as f64 / 1e3,
                    r.figures.sub_fps,
                    r.payload.as_str(),
                )
            })
            .collect();
        chart
            .draw_series(pts.iter().map(|&(x, y, payload)| {
                let size = match payload {
                    "4KiB" => 4,
                    "1080p" => 7,
                    _ => 10,
                };
                Circle::new((x, y), size, color.filled())
            }))
            .map_err(|x| e(&x))?
            .label(key.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: &str, status: &str) -> Row {
        Row {
            peer: peer.into(),
            wake: "blocking".into(),
            mode: "queue".into(),
            payload: "1080p".into(),
            work: "-".into(),
            bytes: 3_110_400,
            subscribers: 1,
            status: status.into(),
            reason: if status == "ok" {
                String::new()
            } else {
                "no CUDA device, nothing to see".into()
            },
            figures: Figures {
                p50_ns: 12_000,
                sub_fps: 900.0,
                ..Default::default()
            },
        }
    }

    #[test]
    fn csv_quotes_reasons_and_has_every_row() {
        let rows = [row("cuframes", "ok"), row("torch-mp", "skipped")];
        let text = csv(&rows);
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("\"no CUDA device, nothing to see\""));
        let t = table(&rows);
        assert!(t.contains("skipped: no CUDA device"));
    }

    #[test]
    fn sim_rows_are_labelled_and_not_plotted() {
        let mut sim = row("cuframes-cuda", SIM);
        sim.reason = "simulator: call overhead only, not a GPU figure (cuframes-sim GPU 0)".into();
        let t = table(&[row("cuframes", "ok"), sim.clone()]);
        let line = t.lines().find(|l| l.starts_with("cuframes-cuda")).unwrap();
        assert!(
            line.contains("[sim]") && line.contains("not a GPU figure"),
            "{t}"
        );
        assert!(t.contains(SIM_FOOTNOTE), "{t}");
        assert!(!table(&[row("cuframes", "ok")]).contains(SIM_FOOTNOTE));
        assert!(csv(&[sim]).contains(",sim,\"simulator: call overhead only"));
    }

    #[test]
    fn join_rows_have_latencies_only() {
        let mut join = row("cuframes", "ok");
        join.payload = "join-gop60-ring16".into();
        join.figures.sub_fps = 0.0;
        join.figures.p50_ns = 1_500_000_000;
        join.reason = "max 1.9 s".into();
        let t = table(&[row("cuframes", "ok"), join]);
        let line = t.lines().find(|l| l.contains("join-gop60")).unwrap();
        assert!(line.contains("1.500 s") && line.contains(" - "), "{t}");
        // The columns line up with the header's.
        let header = t.lines().next().unwrap();
        let frame = t.lines().nth(1).unwrap();
        assert_eq!(header.find("note"), Some(frame.len()), "{t}");
        assert_eq!(header.find("note"), line.find("max 1.9"), "{t}");
    }

    #[test]
    fn svg_is_written() {
        let dir = std::env::temp_dir().join(format!("cuframes-bench-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        svg(&[row("cuframes", "ok"), row("x", "skipped")], &path, "t").unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("<svg"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
