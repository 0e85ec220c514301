//! `cuframes exporter` and the CLI's logging, with real processes: a
//! test-pattern publisher, subscribers, the exporter on an ephemeral
//! loopback port scraped with a plain `TcpStream`, and the values checked
//! against `cuframes::stream_status` read in between scrapes; the
//! publisher's stderr under `RUST_LOG` when a subscriber is killed.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

/// Children killed (SIGKILL) and reaped when the test ends, also when it
/// panics.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn add(&mut self, child: Child) -> usize {
        self.0.push(child);
        self.0.len() - 1
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A `cuframes subscribe` that runs until killed.
fn subscriber(key: &str, name: &str, mode: &str) -> Child {
    cuframes()
        .args(["subscribe", "--key", key, "--name", name, "--mode", mode])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `key` has an active subscriber record named `name`.
fn wait_for_subscriber(key: &str, name: &str) {
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(key).is_ok_and(|s| s.stats.active().any(|r| r.name_str() == name))
    });
}

/// Starts `cuframes exporter --listen 127.0.0.1:0` with `extra` arguments
/// and returns it with the address it printed.
fn exporter(extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = cuframes()
        .args(["exporter", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// One HTTP/1.1 request over a plain TCP connection: (status, headers
/// with lowercase names, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the samples of a Prometheus or OpenMetrics text exposition
/// (comments skipped; label values unescaped).
fn parse(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).expect("name");
        let name = line[..name_end].to_owned();
        let mut labels = HashMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices();
            let (mut key, mut value, mut in_value, mut escaped) =
                (String::new(), String::new(), false, false);
            let end = loop {
                let (i, c) = chars.next().expect("closing brace");
                match (in_value, escaped, c) {
                    (false, _, '}') => break i,
                    (false, _, ',') => {}
                    (false, _, '=') => {}
                    (false, _, '"') => in_value = true,
                    (false, _, c) => key.push(c),
                    (true, true, c) => {
                        value.push(if c == 'n' { '\n' } else { c });
                        escaped = false;
                    }
                    (true, false, '\\') => escaped = true,
                    (true, false, '"') => {
                        labels.insert(std::mem::take(&mut key), std::mem::take(&mut value));
                        in_value = false;
                    }
                    (true, false, c) => value.push(c),
                }
            };
            rest = &r[end + 1..];
        }
        let value = rest.split_whitespace().next().expect("value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Scrapes `/metrics` (Prometheus text) and parses it.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, headers, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{headers:?}"
    );
    parse(&body)
}

/// The value of `name` whose labels include all of `labels`, if exactly one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<_> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(hits.len() <= 1, "several {name} {labels:?}: {hits:?}");
    hits.first().map(|s| s.value)
}

/// Like [`value`], but the sample must exist.
fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in {samples:#?}"))
}

#[test]
fn exporter_serves_every_stream_and_agrees_with_stream_status() {
    let mut procs = Procs::default();
    let key = key("exp");
    procs.add(publisher(&key, "64x32@50", &[]));
    procs.add(subscriber(&key, "detector", "queue"));
    procs.add(subscriber(&key, "viewer", "newest"));
    wait_for_subscriber(&key, "detector");
    wait_for_subscriber(&key, "viewer");
    let (exp, addr) = exporter(&[]);
    let exp = procs.add(exp);
    // Let the publish-rate average settle (it updates every 0.5 s).
    std::thread::sleep(Duration::from_millis(1500));

    let k = key.as_str();
    let first = scrape(addr);
    let status = cuframes::stream_status(k).unwrap();
    let second = scrape(addr);

    for s in [&first, &second] {
        assert_eq!(get(s, "cuframes_stream_up", &[("key", k)]), 1.0);
        assert_eq!(get(s, "cuframes_publisher_alive", &[("key", k)]), 1.0);
        assert_eq!(get(s, "cuframes_stream_open", &[("key", k)]), 1.0);
        assert_eq!(
            get(s, "cuframes_ring_slots", &[("key", k)]),
            f64::from(status.stats.slot_count)
        );
        assert!(
            get(s, "cuframes_ring_occupancy_slots", &[("key", k)])
                <= f64::from(status.stats.slot_count)
        );
        assert_eq!(get(s, "cuframes_subscribers", &[("key", k)]), 2.0);
        let info = s
            .iter()
            .find(|x| x.name == "cuframes_stream_info" && x.labels["key"] == k)
            .expect("stream info");
        assert_eq!(info.labels["format"], "nv12");
        assert_eq!(info.labels["width"], "64");
        assert_eq!(
            info.labels["publisher_pid"],
            status.info.header.publisher_pid.to_string()
        );
        assert!(get(s, "cuframes_last_commit_age_seconds", &[("key", k)]) < 1.0);
        assert!(get(s, "cuframes_publisher_heartbeat_age_seconds", &[("key", k)]) < 2.0);
        let fps = get(s, "cuframes_publish_rate_fps", &[("key", k)]);
        assert!(
            (fps - status.fps()).abs() <= (0.25 * status.fps()).max(5.0),
            "scraped {fps} fps, stream_status {} fps",
            status.fps()
        );
    }
    // Counters: monotone, and the status read in between lies in the window.
    let published = |s: &[Sample]| get(s, "cuframes_published_frames_total", &[("key", k)]);
    assert!(published(&first) <= status.stats.published as f64);
    assert!(status.stats.published as f64 <= published(&second));
    assert!(published(&first) > 0.0);

    for r in status.stats.active() {
        let index = r.index.to_string();
        let labels = [
            ("key", k),
            ("name", r.name_str()),
            ("index", index.as_str()),
        ];
        for s in [&first, &second] {
            assert_eq!(get(s, "cuframes_subscriber_alive", &labels), 1.0);
            assert!(get(s, "cuframes_subscriber_held_frames", &labels) <= 1.0);
            assert!(get(s, "cuframes_subscriber_heartbeat_age_seconds", &labels) < 2.0);
            assert!(get(s, "cuframes_subscriber_lag_frames", &labels) >= 0.0);
            assert_eq!(get(s, "cuframes_subscriber_evictions_total", &labels), 0.0);
        }
        for counter in [
            "cuframes_subscriber_received_frames_total",
            "cuframes_subscriber_dropped_frames_total",
        ] {
            let (a, b) = (
                get(&first, counter, &labels),
                get(&second, counter, &labels),
            );
            let mid = if counter.contains("received") {
                r.received
            } else {
                r.dropped
            } as f64;
            assert!(a <= mid && mid <= b, "{counter}: {a} <= {mid} <= {b}");
        }
        assert!(
            get(
                &second,
                "cuframes_subscriber_received_frames_total",
                &labels
            ) > 0.0
        );
        let info = second
            .iter()
            .find(|x| {
                x.name == "cuframes_subscriber_info"
                    && x.labels.get("index") == Some(&index)
                    && x.labels["key"] == k
            })
            .expect("subscriber info");
        assert_eq!(info.labels["pid"], r.pid.to_string());
    }
    let names: Vec<_> = status
        .stats
        .active()
        .map(|r| r.name_str().to_owned())
        .collect();
    assert!(names.contains(&"detector".to_owned()) && names.contains(&"viewer".to_owned()));

    // OpenMetrics on request, with the counter's family name and # EOF.
    let (code, headers, body) = http(
        addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0,text/plain;q=0.5"),
    );
    assert_eq!(code, 200);
    assert!(headers["content-type"].starts_with("application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE cuframes_published_frames counter\n"));
    assert!(body.contains("# TYPE cuframes_stream info\n"));
    assert!(
        get(
            &parse(&body),
            "cuframes_published_frames_total",
            &[("key", k)]
        ) > 0.0
    );
    // Other paths and methods.
    assert_eq!(http(addr, "GET", "/nope", None).0, 404);
    assert_eq!(http(addr, "POST", "/metrics", None).0, 405);
    assert_eq!(http(addr, "GET", "/", None).0, 200);

    // The publisher dies: its stream stays listed (the segment is left
    // behind), marked dead; or it is gone.
    let publisher = &mut procs.0[0];
    publisher.kill().unwrap();
    publisher.wait().unwrap();
    wait_for(Duration::from_secs(10), || {
        let s = scrape(addr);
        match value(&s, "cuframes_publisher_alive", &[("key", k)]) {
            Some(alive) => alive == 0.0,
            None => value(&s, "cuframes_stream_up", &[("key", k)]).is_none(),
        }
    });
    // A dead publisher's stream is not open and publishes nothing.
    let s = scrape(addr);
    if value(&s, "cuframes_publisher_alive", &[("key", k)]).is_some() {
        assert_eq!(get(&s, "cuframes_stream_open", &[("key", k)]), 0.0);
        assert_eq!(get(&s, "cuframes_publish_rate_fps", &[("key", k)]), 0.0);
    }

    // SIGTERM: a clean exit.
    let exp = &mut procs.0[exp];
    signal(exp, libc::SIGTERM);
    let st = wait_timeout(exp, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
}

#[test]
fn exporter_with_keys_reports_only_those_and_missing_ones_as_down() {
    let mut procs = Procs::default();
    let key = key("expkeys");
    let other = key.clone() + "-other";
    let absent = key.clone() + "-absent";
    procs.add(publisher(&key, "32x32@20", &[]));
    procs.add(publisher(&other, "32x32@20", &[]));
    let (exp, addr) = exporter(&["--keys", &format!("{key},{absent}")]);
    procs.add(exp);
    let s = scrape(addr);
    assert_eq!(get(&s, "cuframes_stream_up", &[("key", &key)]), 1.0);
    assert_eq!(get(&s, "cuframes_stream_up", &[("key", &absent)]), 0.0);
    assert_eq!(value(&s, "cuframes_stream_up", &[("key", &other)]), None);
    assert_eq!(
        value(&s, "cuframes_publisher_alive", &[("key", &absent)]),
        None
    );
    assert_eq!(get(&s, "cuframes_publisher_alive", &[("key", &key)]), 1.0);
}

#[test]
fn exporter_refuses_a_busy_port_and_bad_keys() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = cuframes()
        .args(["exporter", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(15), "{err}");
    assert!(
        err.contains("AlreadyExists") && err.contains(&addr),
        "{err}"
    );
    let out = cuframes()
        .args(["exporter", "--listen", "127.0.0.1:0", "--keys", "ok,../bad"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a publisher with `rust_log` (unset: `None`), kills a subscriber
/// with SIGKILL, waits for its record to be reclaimed, stops the publisher
/// and returns the publisher's stderr.
fn publisher_log_around_a_reclaim(rust_log: Option<&str>, tag: &str) -> (String, String) {
    let mut procs = Procs::default();
    let key = key(tag);
    let mut cmd = cuframes();
    cmd.args(["publish", "--key", &key, "--testsrc", "32x32@50", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    let p = procs.add(cmd.spawn().unwrap());
    let pid = procs.0[p].id();
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key)
            .is_ok_and(|s| s.publisher_alive && s.info.header.publisher_pid == pid)
    });
    let s = procs.add(subscriber(&key, "victim", "queue"));
    wait_for_subscriber(&key, "victim");
    let victim = &mut procs.0[s];
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    // The publisher's keeper sweeps every heartbeat (100 ms).
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(&key).is_ok_and(|s| s.stats.active().count() == 0)
    });
    let publisher = &mut procs.0[p];
    signal(publisher, libc::SIGTERM);
    let st = wait_timeout(publisher, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    (key, stderr_of(publisher))
}

#[test]
fn publisher_logs_the_reclaim_of_a_killed_subscriber() {
    let (key, err) = publisher_log_around_a_reclaim(Some("info"), "logreclaim");
    let reclaim = err
        .lines()
        .find(|l| l.contains("reclaimed the record of a dead subscriber"))
        .unwrap_or_else(|| panic!("no reclaim line in:\n{err}"));
    assert!(reclaim.contains("WARN"), "{reclaim}");
    assert!(reclaim.contains("cuframes::liveness"), "{reclaim}");
    assert!(reclaim.contains(&format!("key=\"{key}\"")), "{reclaim}");
    assert!(reclaim.contains("name=\"victim\""), "{reclaim}");
    assert!(reclaim.contains("state=\"active\""), "{reclaim}");
    assert!(
        reclaim.contains("index=") && reclaim.contains("generation="),
        "{reclaim}"
    );
    // Lifecycle at info.
    assert!(
        err.contains("INFO") && err.contains("publisher created stream"),
        "{err}"
    );
    assert!(err.contains("publisher closed stream"), "{err}");
}

#[test]
fn default_log_level_is_warn() {
    let (_, err) = publisher_log_around_a_reclaim(None, "logdefault");
    assert!(
        err.contains("reclaimed the record of a dead subscriber"),
        "{err}"
    );
    assert!(!err.contains("INFO"), "info lines without RUST_LOG:\n{err}");
}

/// `cuframes publish --testsrc` with `RUST_LOG` set to `rust_log` and
/// stderr piped; returns once its stream is open.
fn logging_publisher(key: &str, rust_log: &str, extra: &[&str]) -> Child {
    let child = cuframes()
        .args(["publish", "--key", key, "--testsrc", "64x32@50", "--quiet"])
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for(Duration::from_secs(10), || {
        cuframes::stream_status(key)
            .is_ok_and(|s| s.publisher_alive && s.info.header.publisher_pid == pid)
    });
    child
}

/// The subscriber record named `name` on `key`, if active.
fn record(key: &str, name: &str) -> Option<cuframes::RecordStats> {
    let s = cuframes::stream_status(key).ok()?;
    let r = s.stats.active().find(|r| r.name_str() == name).copied();
    r
}

#[test]
fn publisher_warns_when_it_evicts_a_stalled_lossless_subscriber() {
    let mut procs = Procs::default();
    let key = key("logevict");
    let p = procs.add(logging_publisher(
        &key,
        "warn",
        &["--block-timeout-ms", "200"],
    ));
    let s = procs.add(subscriber(&key, "stalled", "queue"));
    wait_for(Duration::from_secs(10), || {
        record(&key, "stalled").is_some_and(|r| r.received > 0)
    });
    signal(&procs.0[s], libc::SIGSTOP);
    wait_for(Duration::from_secs(10), || {
        record(&key, "stalled").is_some_and(|r| r.evictions > 0)
    });
    signal(&procs.0[s], libc::SIGCONT);
    let publisher = &mut procs.0[p];
    signal(publisher, libc::SIGTERM);
    let st = wait_timeout(publisher, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    let err = stderr_of(publisher);
    let line = err
        .lines()
        .find(|l| l.contains("evicted lagging lossless subscribers"))
        .unwrap_or_else(|| panic!("no eviction line in:\n{err}"));
    assert!(
        line.contains("WARN") && line.contains(&format!("key=\"{key}\"")),
        "{line}"
    );
    assert!(
        line.contains("evicted=1") && line.contains("stalled"),
        "{line}"
    );
}

#[test]
fn truncation_is_warned_once_per_process() {
    let mut procs = Procs::default();
    let key = key("logtrunc");
    let p = procs.add(logging_publisher(&key, "warn", &["--seconds", "60"]));
    let s = procs.add(
        cuframes()
            .args([
                "subscribe",
                "--key",
                &key,
                "--name",
                "cut",
                "--mode",
                "queue",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), || {
        record(&key, "cut").is_some_and(|r| r.received > 5)
    });
    let path = shm().join(format!("cuframes.{key}"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    for (i, what, needle) in [
        (p, "publisher", "truncated or resized under the publisher"),
        (s, "subscriber", "segment is corrupt or was truncated"),
    ] {
        let child = &mut procs.0[i];
        let st = wait_timeout(child, Duration::from_secs(10));
        let err = stderr_of(child);
        assert_eq!(st.code(), Some(11), "{what}: {st:?}\n{err}");
        let warned: Vec<_> = err.lines().filter(|l| l.contains(needle)).collect();
        assert_eq!(warned.len(), 1, "{what}:\n{err}");
        assert!(warned[0].contains("WARN"), "{what}:\n{err}");
    }
}

#[test]
fn reconnecting_subscriber_logs_the_cause() {
    let mut procs = Procs::default();
    let key = key("logreconnect");
    let first = procs.add(logging_publisher(&key, "warn", &[]));
    let s = procs.add(
        cuframes()
            .args(["subscribe", "--key", &key, "--name", "again", "--reconnect"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), || {
        record(&key, "again").is_some_and(|r| r.received > 0)
    });
    let publisher = &mut procs.0[first];
    publisher.kill().unwrap(); // SIGKILL: the subscriber sees PublisherGone
    publisher.wait().unwrap();
    procs.add(logging_publisher(&key, "warn", &[]));
    wait_for(Duration::from_secs(10), || {
        record(&key, "again").is_some_and(|r| r.received > 0)
    });
    let sub = &mut procs.0[s];
    signal(sub, libc::SIGTERM);
    wait_timeout(sub, Duration::from_secs(10));
    let err = stderr_of(sub);
    let gone = err
        .lines()
        .find(|l| l.contains("publisher gone; reconnecting"))
        .unwrap_or_else(|| panic!("no reconnect cause in:\n{err}"));
    assert!(gone.contains("cause=\"PublisherGone\""), "{gone}");
    assert!(gone.contains("cuframes::reconnect"), "{gone}");
    let back = err
        .lines()
        .find(|l| l.contains("reconnected"))
        .unwrap_or_else(|| panic!("no reconnected line in:\n{err}"));
    assert!(back.contains("reconnects=1"), "{back}");
    assert_eq!(err.matches("subscriber connected").count(), 2, "{err}");
}

#[test]
fn a_subscriber_that_recovers_a_dead_record_logs_it() {
    let mut procs = Procs::default();
    let key = key("logrecover");
    let p = procs.add(logging_publisher(&key, "warn", &[]));
    let dead = procs.add(subscriber(&key, "dead", "queue"));
    wait_for(Duration::from_secs(10), || {
        record(&key, "dead").is_some_and(|r| r.received > 0)
    });
    // The publisher is stopped, so its keeper cannot sweep first: the
    // newcomer finds the dead record and recovers it itself.
    signal(&procs.0[p], libc::SIGSTOP);
    let victim = &mut procs.0[dead];
    victim.kill().unwrap();
    victim.wait().unwrap();
    let fresh = procs.add(
        cuframes()
            .args([
                "subscribe",
                "--key",
                &key,
                "--name",
                "fresh",
                "--frames",
                "1",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // It registers (and may take the newest frame, published before the
    // stop, and exit) while the publisher is stopped.
    wait_for(Duration::from_secs(10), || {
        record(&key, "fresh").is_some() || matches!(procs.0[fresh].try_wait(), Ok(Some(_)))
    });
    signal(&procs.0[p], libc::SIGCONT);
    let child = &mut procs.0[fresh];
    let st = wait_timeout(child, Duration::from_secs(10));
    let err = stderr_of(child);
    assert!(st.success(), "{st:?}\n{err}");
    let reclaim = err
        .lines()
        .find(|l| l.contains("reclaimed the record of a dead subscriber"))
        .unwrap_or_else(|| panic!("no reclaim line in:\n{err}"));
    assert!(
        reclaim.contains("by=\"register\"") && reclaim.contains("name=\"dead\""),
        "{reclaim}"
    );
    assert!(
        err.contains("subscriber registered on a record recovered from a dead process"),
        "{err}"
    );
}

/// A packet stream is described as one (content, codec) and has its bit
/// rate and GOP length exported; a frame stream has neither.
#[test]
fn exporter_reports_packet_bitrate_and_gop() {
    let frames = key("exp-frames");
    let key = key("exp-packets");
    let mut procs = Procs::default();
    procs.add(publisher(&frames, "32x32@50", &[]));
    let stream = cuframes::PacketStream::new(cuframes::Codec::Hevc, 4096);
    let mut p = cuframes::PacketPublisher::create(&key, &stream, Default::default()).unwrap();
    // 10 packets of 1000 bytes every 10 ms (800 kbit/s), a keyframe every 6.
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        let flags = if n % 6 == 0 { cuframes::packet::KEY } else { 0 };
        let meta = cuframes::PacketMeta {
            flags,
            ..Default::default()
        };
        p.publish(&[7u8; 1000], &meta).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
        if n % 10 == 0 {
            std::thread::sleep(Duration::from_millis(9));
        }
    }
    let (mut exp, addr) = exporter(&[]);
    let samples = scrape(addr);
    let _ = exp.kill();
    let _ = exp.wait();
    let info = [
        ("key", key.as_str()),
        ("content", "packets"),
        ("format", "hevc"),
    ];
    assert_eq!(get(&samples, "cuframes_stream_info", &info), 1.0);
    assert_eq!(get(&samples, "cuframes_packet_gop", &[("key", &key)]), 6.0);
    let bps = get(&samples, "cuframes_packet_bitrate_bps", &[("key", &key)]);
    assert!(bps > 100_000.0, "{bps}");
    assert_eq!(
        value(&samples, "cuframes_packet_gop", &[("key", &frames)]),
        None
    );
    let info = [("key", frames.as_str()), ("content", "frames")];
    assert_eq!(get(&samples, "cuframes_stream_info", &info), 1.0);
}
