//! `cuframes exporter`: every stream's counters as Prometheus / OpenMetrics
//! text on `GET /metrics`, read from shared memory at each scrape (the
//! exporter joins no stream: it maps segments read-only, like `cuframes
//! stat`). Also the CLI's logging setup ([`init_logging`]).
//!
//! Metric names, types and labels are documented in docs/metrics.md.

use cuframes::{
    list_streams, stream_status, validate_key, Error, ErrorCode, Mode, Result, StreamStatus,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Arguments of `cuframes exporter`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to serve `/metrics` on. Loopback by default: binding any
    /// other address (e.g. 0.0.0.0:9464) is an explicit choice to let other
    /// hosts read stream names, pids and counters.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Export only these stream keys (comma separated); by default every
    /// stream in the shm directory. A listed key without a readable stream
    /// shows as `cuframes_stream_up{key=...} 0`.
    #[arg(long, value_delimiter = ',', value_name = "K1,K2")]
    pub keys: Vec<String>,
}

/// Installs the CLI's log subscriber: `tracing` events (and `log` records
/// from dependencies) as text lines on stderr, filtered by `RUST_LOG`
/// (`EnvFilter` syntax, e.g. `info` or `cuframes::liveness=debug`),
/// `warn` when it is unset. Call once, first thing in `main`; a second
/// call does nothing.
pub fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Content type of the OpenMetrics text format, served to scrapers that
/// ask for it (Prometheus does by default).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` until SIGINT or SIGTERM. Prints the bound address
/// (`listening on http://ADDR/metrics`) on stdout first, so `--listen
/// 127.0.0.1:0` can be used to get a free port.
pub fn run(mut args: Args) -> Result<()> {
    for key in &args.keys {
        validate_key(key)?;
    }
    // A key listed twice would give duplicate series.
    let mut seen = std::collections::HashSet::new();
    args.keys.retain(|k| seen.insert(k.clone()));
    let stop = crate::stop_flag()?;
    let listener = TcpListener::bind(args.listen).map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::AddrInUse => ErrorCode::AlreadyExists,
            std::io::ErrorKind::PermissionDenied => ErrorCode::Permission,
            _ => ErrorCode::Io,
        };
        Error::new(code, format!("listen on {}: {e}", args.listen))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("listening socket address", e))?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| Error::new(ErrorCode::Io, format!("start HTTP server: {e}")))?;
    if !bound.ip().is_loopback() {
        tracing::info!(%bound, "serving metrics beyond this host, as asked (--listen)");
    }
    println!("listening on http://{bound}/metrics");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%bound, keys = ?args.keys, "exporter started");

    let mut registry = Registry::default();
    registry.register_collector(Box::new(Streams { keys: args.keys }));
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => return Err(Error::io("accept HTTP request", e)),
        };
        let response = respond(&registry, &request);
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "could not send a response");
        }
    }
    Ok(())
}

/// The response to one request: metrics on `GET /metrics`, a pointer to
/// them on `GET /`, 404 or 405 otherwise.
fn respond(
    registry: &Registry,
    request: &tiny_http::Request,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    use tiny_http::{Method, Response};
    let text = |status: u16, body: &str| {
        Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    };
    if !matches!(request.method(), Method::Get | Method::Head) {
        return text(405, "only GET\n").with_header(header("Allow", "GET, HEAD"));
    }
    let path = request.url().split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            // OpenMetrics if the scraper asks for it, else the classic
            // Prometheus text format (curl, older scrapers).
            let openmetrics = request.headers().iter().any(|h| {
                h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
            });
            let mut body = String::new();
            let (encoded, content_type) = if openmetrics {
                (
                    prometheus_client::encoding::text::encode(&mut body, registry),
                    OPENMETRICS,
                )
            } else {
                (
                    prometheus_client::encoding::prometheus_text::encode(&mut body, registry),
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                )
            };
            match encoded {
                Ok(()) => {
                    Response::from_string(body).with_header(header("Content-Type", content_type))
                }
                Err(_) => {
                    tracing::warn!("encoding the metrics failed");
                    text(500, "encoding the metrics failed\n")
                }
            }
        }
        "/" => text(200, "cuframes exporter: metrics at /metrics\n"),
        _ => text(404, "not found; metrics are at /metrics\n"),
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}

/// Reads the streams at each scrape.
#[derive(Debug)]
struct Streams {
    /// Keys to export; empty: every stream in the shm directory.
    keys: Vec<String>,
}

impl Collector for Streams {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let streams = if self.keys.is_empty() {
            list_streams()
        } else {
            self.keys
                .iter()
                .map(|k| (k.clone(), stream_status(k)))
                .collect()
        };
        // Read after the streams, so ages are never negative.
        let now_ns = cuframes::now_ns();
        for (key, status) in &streams {
            if let Err(e) = status {
                tracing::debug!(key, error = %e, "stream not readable");
            }
        }
        encode_streams(encoder, &streams, now_ns)
    }
}

/// A label set: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

/// One sample's value.
enum Value {
    Gauge(f64),
    Int(i64),
    Counter(u64),
}

/// Writes one metric family with its samples: a counter family if `name`
/// is one of [`COUNTERS`], else a gauge family.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels, Value)>,
) -> std::fmt::Result {
    let metric_type = if COUNTERS.contains(&name) {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in &samples {
        let e = metric.encode_family(labels)?;
        match *value {
            Value::Gauge(v) => ConstGauge::new(v).encode(e)?,
            Value::Int(v) => ConstGauge::new(v).encode(e)?,
            Value::Counter(v) => ConstCounter::new(v).encode(e)?,
        }
    }
    Ok(())
}

/// The counter families (their samples get the `_total` suffix).
const COUNTERS: &[&str] = &[
    "cuframes_published_frames",
    "cuframes_subscriber_received_frames",
    "cuframes_subscriber_dropped_frames",
    "cuframes_subscriber_evictions",
];

/// Writes an info family (`NAME_info{labels} 1`).
fn info(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<Labels>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in &rows {
        metric.encode_info(labels)?;
    }
    Ok(())
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Writes every family for `streams` (each family holds all streams'
/// samples, as the text formats require).
fn encode_streams(
    mut enc: DescriptorEncoder,
    streams: &[(String, Result<StreamStatus>)],
    now_ns: u64,
) -> std::fmt::Result {
    let e = &mut enc;
    let ok: Vec<&StreamStatus> = streams
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .collect();
    let key = |s: &StreamStatus| -> Labels { vec![("key", s.key.clone())] };
    let per_stream = |f: &dyn Fn(&StreamStatus) -> Option<Value>| -> Vec<(Labels, Value)> {
        ok.iter()
            .filter_map(|s| f(s).map(|v| (key(s), v)))
            .collect()
    };
    let flag = |b: bool| Value::Int(i64::from(b));

    family(
        e,
        "cuframes_stream_up",
        "Whether the stream's segment could be opened and validated (0: listed but missing or unreadable)",
        None,
        streams
            .iter()
            .map(|(k, s)| (vec![("key", k.clone())], flag(s.is_ok())))
            .collect(),
    )?;
    info(
        e,
        "cuframes_stream",
        "Stream description: frame format and size, memory kind, lossless policy, publisher pid and epoch",
        ok.iter()
            .map(|s| {
                let h = &s.info.header;
                vec![
                    ("key", s.key.clone()),
                    ("content", s.info.content.name().to_owned()),
                    ("format", s.info.format_name().to_owned()),
                    ("width", h.layout.width.to_string()),
                    ("height", h.layout.height.to_string()),
                    ("memory", s.info.memory.name().to_owned()),
                    ("policy", s.info.policy.name().to_owned()),
                    ("publisher_pid", h.publisher_pid.to_string()),
                    ("epoch", format!("{:016x}", h.epoch)),
                ]
            })
            .collect(),
    )?;
    family(
        e,
        "cuframes_publisher_alive",
        "Whether the stream's publisher process holds its liveness lock (1) or is gone (0)",
        None,
        per_stream(&|s| Some(flag(s.publisher_alive))),
    )?;
    family(
        e,
        "cuframes_stream_open",
        "Whether the stream is open (1) or closed, not yet open, or its publisher dead (0)",
        None,
        per_stream(&|s| Some(flag(s.is_open()))),
    )?;
    family(
        e,
        "cuframes_published_frames",
        "Frames the publisher committed",
        None,
        per_stream(&|s| Some(Value::Counter(s.stats.published))),
    )?;
    family(
        e,
        "cuframes_publish_rate_fps",
        "Publish rate in frames per second, as averaged by the publisher's keeper thread",
        None,
        per_stream(&|s| Some(Value::Gauge(s.fps()))),
    )?;
    let packets = |s: &StreamStatus| s.info.codec.is_some();
    family(
        e,
        "cuframes_packet_bitrate_bps",
        "Packet streams: payload bit rate in bits per second, as averaged by the publisher's keeper thread",
        None,
        per_stream(&|s| packets(s).then_some(Value::Gauge(s.stats.bitrate_bps as f64))),
    )?;
    family(
        e,
        "cuframes_packet_gop",
        "Packet streams: packets from the last keyframe but one to the last (0 until two were seen)",
        None,
        per_stream(&|s| packets(s).then_some(Value::Gauge(s.stats.gop as f64))),
    )?;
    family(
        e,
        "cuframes_ring_slots",
        "Slots in the ring",
        None,
        per_stream(&|s| Some(Value::Int(i64::from(s.stats.slot_count)))),
    )?;
    family(
        e,
        "cuframes_ring_occupancy_slots",
        "Slots held by subscribers or still needed by a lossless subscriber",
        None,
        per_stream(&|s| Some(Value::Int(i64::from(s.stats.occupancy)))),
    )?;
    family(
        e,
        "cuframes_last_commit_age",
        "Time since the newest frame was committed (absent before the first frame)",
        Some(&Unit::Seconds),
        per_stream(&|s| {
            (s.stats.last_commit_ns != 0)
                .then(|| Value::Gauge(seconds(now_ns.saturating_sub(s.stats.last_commit_ns))))
        }),
    )?;
    family(
        e,
        "cuframes_publisher_heartbeat_age",
        "Time since the publisher's keeper thread last stamped its heartbeat",
        Some(&Unit::Seconds),
        per_stream(&|s| {
            Some(Value::Gauge(seconds(
                now_ns.saturating_sub(s.stats.heartbeat_ns),
            )))
        }),
    )?;
    family(
        e,
        "cuframes_subscribers",
        "Active subscriber records",
        None,
        per_stream(&|s| Some(Value::Int(s.stats.active().count() as i64))),
    )?;

    // Subscribers: labels key, name, index (the record; names need not be
    // unique).
    type Sub<'a> = (&'a StreamStatus, &'a cuframes::RecordStats);
    let subs: Vec<Sub> = ok
        .iter()
        .flat_map(|s| s.stats.active().map(move |r| (*s, r)))
        .collect();
    let labels = |(s, r): Sub| -> Labels {
        vec![
            ("key", s.key.clone()),
            ("name", r.name_str().to_owned()),
            ("index", r.index.to_string()),
        ]
    };
    let per_sub = |f: &dyn Fn(Sub) -> Value| -> Vec<(Labels, Value)> {
        subs.iter().map(|&x| (labels(x), f(x))).collect()
    };
    info(
        e,
        "cuframes_subscriber",
        "Subscriber description: read mode, process id, record generation",
        subs.iter()
            .map(|&(s, r)| {
                let mut l = labels((s, r));
                l.push(("mode", r.mode.map_or("unknown", Mode::name).to_owned()));
                l.push(("pid", r.pid.to_string()));
                l.push(("generation", r.generation.to_string()));
                l
            })
            .collect(),
    )?;
    family(
        e,
        "cuframes_subscriber_alive",
        "Whether the subscriber's process holds its record's liveness lock (0: dead, freed by the publisher's next sweep)",
        None,
        per_sub(&|(s, r)| flag(s.record_alive(r.index))),
    )?;
    family(
        e,
        "cuframes_subscriber_received_frames",
        "Frames the subscriber received (per record: restarts from 0 when it reconnects)",
        None,
        per_sub(&|(_, r)| Value::Counter(r.received)),
    )?;
    family(
        e,
        "cuframes_subscriber_dropped_frames",
        "Frames the subscriber lost (queue mode, drop-oldest or eviction) or skipped (newest-only)",
        None,
        per_sub(&|(_, r)| Value::Counter(r.dropped)),
    )?;
    family(
        e,
        "cuframes_subscriber_evictions",
        "Times the publisher evicted this lossless subscriber for lagging past the block timeout",
        None,
        per_sub(&|(_, r)| Value::Counter(r.evictions)),
    )?;
    family(
        e,
        "cuframes_subscriber_lag_frames",
        "Frames published that the subscriber has not read yet",
        None,
        per_sub(&|(_, r)| Value::Int(r.lag.min(i64::MAX as u64) as i64)),
    )?;
    family(
        e,
        "cuframes_subscriber_held_frames",
        "Frames the subscriber holds now (each pins a slot)",
        None,
        per_sub(&|(_, r)| Value::Int(i64::from(r.held))),
    )?;
    family(
        e,
        "cuframes_subscriber_heartbeat_age",
        "Time since the subscriber's process stamped its heartbeat (informative: liveness is decided by the lock)",
        Some(&Unit::Seconds),
        per_sub(&|(_, r)| Value::Gauge(seconds(now_ns.saturating_sub(r.heartbeat_ns)))),
    )?;
    Ok(())
}
