//! Bridges in separate processes over real Zenoh sessions on 127.0.0.1:
//! peer to peer and through a router, lossless raw frames byte-exact and in
//! order, an H.264 packet stream recorded on the far side, kill -9 of the
//! importer, the exporter and the router, TLS, and what listens where.

use cuframes::{testsrc, FrameLayout, Mode, PixelFormat, Publisher, PublisherOptions, Subscriber};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// A private shm directory for this test binary and its children.
static SHM: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("cuframes-bridge-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
    dir
});

/// A free TCP port on 127.0.0.1, distinct within this run.
fn port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed);
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (SIGKILL) when dropped; its stderr goes to a
/// log file shown when a test fails.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGINT and returns what it printed on stdout.
    fn interrupt(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        out
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- {} (last lines)", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn bridge(tag: &str, args: &[&str]) -> Proc {
    let log = SHM.join(format!("{tag}-{}.log", port()));
    let child = Command::new(env!("CARGO_BIN_EXE_cuframes-bridge"))
        .args(args)
        .env("CUFRAMES_SHM_DIR", &*SHM)
        .env("RUST_LOG", "info,zenoh=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proc { child, log }
}

/// An exporter of `<name>-src` listening on `port` and an importer into
/// `<name>-dst` connected to it, both in `mode`.
fn peer_to_peer(name: &str, mode: &str, port: u16) -> (Proc, Proc) {
    let (src, dst, ep) = (format!("{name}-src"), format!("{name}-dst"), endpoint(port));
    let exporter = bridge(
        "exp",
        &[
            "export", "--key", &src, "--as", name, "--mode", mode, "--listen", &ep,
        ],
    );
    let importer = bridge(
        "imp",
        &[
            "import",
            "--remote",
            name,
            "--key",
            &dst,
            "--mode",
            mode,
            "--connect",
            &ep,
        ],
    );
    (exporter, importer)
}

fn endpoint(port: u16) -> String {
    format!("tcp/127.0.0.1:{port}")
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn active(key: &str) -> usize {
    cuframes::stream_status(key).map_or(0, |s| s.stats.active().count())
}

fn layout() -> FrameLayout {
    FrameLayout::new(PixelFormat::Nv12, 320, 180, 64).unwrap()
}

/// Publishes stamped test frames into `key` until `stop`, or `count`.
fn publish(
    key: &str,
    count: Option<u64>,
    fps: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let key = key.to_owned();
    let mut p = Publisher::create(
        &key,
        layout(),
        PublisherOptions {
            slot_count: 8,
            block_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .unwrap();
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| n < c) {
            let mut lease = p.loan().unwrap();
            let seq = lease.seq();
            testsrc::fill(&layout(), lease.data_mut(), seq);
            lease.commit(seq as i64).unwrap();
            n += 1;
            if fps > 0 {
                std::thread::sleep(Duration::from_secs(1) / fps);
            }
        }
        n
    })
}

/// The seq a test frame was stamped with, after checking every byte of it.
fn stamped(frame: &cuframes::Frame) -> u64 {
    let l = frame.layout();
    let at = l.planes()[0].offset as usize;
    let seq = u64::from_le_bytes(frame.data()[at + 8..at + 16].try_into().unwrap());
    assert_eq!(
        testsrc::verify(l, frame.data(), seq),
        Ok(()),
        "frame stamped {seq} damaged"
    );
    seq
}

/// Lossless, peer to peer: every frame arrives byte-exact and in order,
/// the last ones too when the source closes right after them while a slow
/// far-side reader still has a backlog; then the far side closes as well.
#[test]
fn lossless_raw_frames_arrive_byte_exact_in_order() {
    LazyLock::force(&SHM);
    let p = port();
    // The source exists (no frame yet), the bridge comes up around it.
    let (_exporter, importer) = peer_to_peer("ll", "lossless", p);
    let frames = 200;
    let publisher = {
        // Created now, published into once the exporter reads it and a
        // reader reads the importer's stream.
        let mut pub_ = Publisher::create("ll-src", layout(), PublisherOptions::default()).unwrap();
        std::thread::spawn(move || {
            assert!(wait_for(Duration::from_secs(20), || active("ll-src") >= 1
                && active("ll-dst") >= 1));
            for _ in 0..frames {
                let mut lease = pub_.loan().unwrap();
                let seq = lease.seq();
                testsrc::fill(&layout(), lease.data_mut(), seq);
                lease.commit(0).unwrap();
            }
            // Closed at once, while frames are still on their way.
            drop(pub_);
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), || cuframes::stream_status(
            "ll-dst"
        )
        .is_ok()),
        "the importer created its stream"
    );
    let mut reader =
        Subscriber::connect("ll-dst", "reader", Mode::Queue, Default::default()).unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < frames as usize {
        let f = reader
            .next_frame(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("after {} frames: {e}", seqs.len()));
        seqs.push(stamped(&f));
        std::thread::sleep(Duration::from_millis(2)); // a slow reader
    }
    assert_eq!(seqs, (1..=frames).collect::<Vec<u64>>());
    // The source closed: so does the far side, with the same error.
    publisher.join().unwrap();
    let e = reader.next_frame(Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.code(), cuframes::ErrorCode::Closed);
    let report = importer.interrupt();
    assert!(report.contains(&format!("imported {frames} ")), "{report}");
}

/// Through a router: frames keep coming after kill -9 of the importer, of
/// the exporter and of the router, each restarted.
#[test]
fn kill9_of_importer_exporter_and_router_recovers() {
    LazyLock::force(&SHM);
    let p = port();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish("rk-src", None, 200, stop.clone());
    let router = || bridge("router", &["router", "--listen", &endpoint(p)]);
    let exporter = || {
        bridge(
            "exp",
            &[
                "export",
                "--key",
                "rk-src",
                "--as",
                "rk",
                "--zenoh-mode",
                "client",
                "--connect",
                &endpoint(p),
            ],
        )
    };
    let importer = || {
        bridge(
            "imp",
            &[
                "import",
                "--remote",
                "rk",
                "--key",
                "rk-dst",
                "--zenoh-mode",
                "client",
                "--connect",
                &endpoint(p),
            ],
        )
    };
    let mut r = router();
    let mut e = exporter();
    let mut i = importer();
    let mut reader = cuframes::ReconnectingSubscriber::new(
        "rk-dst",
        "reader",
        Mode::NewestOnly,
        Default::default(),
    );
    // Frames with stamps newer than `after` arrive (intact) within the limit.
    let flowing = |what: &str, reader: &mut cuframes::ReconnectingSubscriber| {
        let mut newer = 0;
        let mut last = 0;
        let ok = wait_for(Duration::from_secs(20), || {
            if let Ok(f) = reader.next_frame(Duration::from_millis(200)) {
                let s = stamped(&f);
                if s > last {
                    newer += 1;
                    last = s;
                }
            }
            newer >= 10
        });
        assert!(ok, "{what}: frames stopped ({newer} arrived)");
    };
    flowing("start", &mut reader);
    i.kill9();
    i = importer();
    flowing("importer restarted", &mut reader);
    e.kill9();
    e = exporter();
    flowing("exporter restarted", &mut reader);
    r.kill9();
    std::thread::sleep(Duration::from_millis(500));
    r = router();
    flowing("router restarted", &mut reader);
    assert!(
        reader.reconnects() >= 2,
        "the far side's stream was re-created"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    drop((r, e, i));
}

/// The exporter's process dies: the importer's stream ends as a dead
/// publisher's does (`PublisherGone`), not as closed.
#[test]
fn exporter_death_is_publisher_gone_on_the_far_side() {
    LazyLock::force(&SHM);
    let p = port();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish("eg-src", None, 100, stop.clone());
    let (mut e, _i) = peer_to_peer("eg", "newest", p);
    assert!(wait_for(Duration::from_secs(20), || {
        cuframes::stream_status("eg-dst").is_ok()
    }));
    let mut reader =
        Subscriber::connect("eg-dst", "reader", Mode::NewestOnly, Default::default()).unwrap();
    reader.next_frame(Duration::from_secs(10)).unwrap();
    e.kill9();
    let err = loop {
        match reader.next_frame(Duration::from_secs(10)) {
            Ok(_) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(err.code(), cuframes::ErrorCode::PublisherGone, "{err}");
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
}

/// Listening sockets of a process: (address, port) of its TCP listeners,
/// from /proc.
fn listeners(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(String::from)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (f[1], f[3], f[9]);
            let listening = table.starts_with("udp") || state == "0A";
            if listening && inodes.iter().any(|i| i == inode) {
                let (addr, port) = local.split_once(':').unwrap();
                out.push((addr.to_owned(), u16::from_str_radix(port, 16).unwrap()));
            }
        }
    }
    out
}

/// Without a listen flag nothing listens; with one, only there. No
/// multicast scouting socket either.
#[test]
fn nothing_listens_beyond_what_was_asked() {
    LazyLock::force(&SHM);
    let p = port();
    let quiet = bridge(
        "quiet",
        &["import", "--remote", "nobody", "--key", "quiet-dst"],
    );
    let listening = bridge(
        "listening",
        &["export", "--key", "nobody-src", "--listen", &endpoint(p)],
    );
    // 127.0.0.1 in /proc's little-endian hex.
    let asked = vec![("0100007F".to_owned(), p)];
    // Up once the exporter listens (a loaded machine may take a while);
    // the importer started first, and gets a moment more.
    let up = wait_for(Duration::from_secs(20), || {
        !listeners(listening.pid()).is_empty()
    });
    assert!(up, "the exporter never listened");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(listeners(listening.pid()), asked, "only the asked endpoint");
    assert_eq!(
        listeners(quiet.pid()),
        vec![],
        "the importer listens nowhere"
    );
}

/// TLS from a Zenoh configuration file: an importer that trusts the
/// exporter's CA gets frames; one without the CA gets none.
#[test]
fn tls_configuration_is_used_and_enforced() {
    LazyLock::force(&SHM);
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: openssl is not installed (needed to make test certificates)");
        return;
    }
    let dir = SHM.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let p = port();
    let path = |f: &str| dir.join(f).display().to_string();
    let server = dir.join("server.json5");
    std::fs::write(
        &server,
        format!(
            r#"{{ mode: "peer", scouting: {{ multicast: {{ enabled: false }} }},
                 listen: {{ endpoints: ["tls/localhost:{p}"] }},
                 transport: {{ link: {{ tls: {{ listen_private_key: "{}", listen_certificate: "{}" }} }} }} }}"#,
            path("server.key"),
            path("server.crt")
        ),
    )
    .unwrap();
    let client = |name: &str, ca: Option<&str>| {
        let file = dir.join(name);
        let tls = ca.map_or(String::new(), |ca| {
            format!(r#"transport: {{ link: {{ tls: {{ root_ca_certificate: "{ca}" }} }} }},"#)
        });
        std::fs::write(
            &file,
            format!(
                r#"{{ mode: "peer", scouting: {{ multicast: {{ enabled: false }} }}, listen: {{ endpoints: [] }},
                     {tls} connect: {{ endpoints: ["tls/localhost:{p}"] }} }}"#
            ),
        )
        .unwrap();
        file
    };
    let trusting = client("trusting.json5", Some(&path("ca.crt")));
    let untrusting = client("untrusting.json5", None);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish("tls-src", None, 100, stop.clone());
    let _e = bridge(
        "exp",
        &[
            "export",
            "--key",
            "tls-src",
            "--as",
            "tls",
            "--zenoh-config",
            server.to_str().unwrap(),
        ],
    );
    let _bad = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "tls",
            "--key",
            "tls-untrusted",
            "--zenoh-config",
            untrusting.to_str().unwrap(),
        ],
    );
    let _good = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "tls",
            "--key",
            "tls-trusted",
            "--zenoh-config",
            trusting.to_str().unwrap(),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(20), || cuframes::stream_status(
            "tls-trusted"
        )
        .is_ok_and(|s| s.stats.published > 10)),
        "frames over TLS"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        cuframes::stream_status("tls-untrusted").is_err(),
        "no frames without the CA"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
}

/// A CA, and a certificate for `localhost` it signed.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=cuframes test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

/// The cuframes CLI built beside the bridge (the workspace's bins).
fn cli() -> Option<PathBuf> {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_cuframes-bridge")).with_file_name("cuframes");
    exe.is_file().then_some(exe)
}

fn have_ffmpeg() -> bool {
    ["ffmpeg", "ffprobe"]
        .iter()
        .all(|t| Command::new(t).arg("-version").output().is_ok())
}

/// An H.264 packet stream (a real file, `cuframes publish --encoded`)
/// crosses the bridge losslessly: recorded on the far side by `cuframes
/// subscribe --record`, it decodes without an error. An importer that
/// joins mid-stream starts its ring at a keyframe.
#[test]
fn packet_stream_recorded_on_the_far_side_decodes() {
    LazyLock::force(&SHM);
    let (Some(cli), true) = (cli(), have_ffmpeg()) else {
        eprintln!("skipped: needs ffmpeg and the cuframes CLI built beside the bridge");
        return;
    };
    let dir = SHM.join("packets");
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.mp4");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=4",
        ])
        .args([
            "-c:v", "libx264", "-g", "25", "-bf", "2", "-pix_fmt", "yuv420p",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let p = port();
    let (_e, _i) = peer_to_peer("pk", "lossless", p);
    std::thread::sleep(Duration::from_millis(500));
    let mut publisher = Command::new(&cli)
        .args([
            "publish",
            "--key",
            "pk-src",
            "--encoded",
            "--quiet",
            "--input",
        ])
        .arg(&input)
        .env("CUFRAMES_SHM_DIR", &*SHM)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(20), || {
        cuframes::stream_status("pk-dst").is_ok()
    }));
    let recording = dir.join("out.mp4");
    let recorder = Command::new(&cli)
        .args([
            "subscribe",
            "--key",
            "pk-dst",
            "--mode",
            "queue",
            "--record",
        ])
        .arg(&recording)
        .env("CUFRAMES_SHM_DIR", &*SHM)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A late importer, 1.5 s in: its ring starts at a keyframe.
    std::thread::sleep(Duration::from_millis(1500));
    let _late = bridge(
        "late",
        &[
            "import",
            "--remote",
            "pk",
            "--key",
            "pk-late",
            "--connect",
            &endpoint(p),
        ],
    );
    assert!(wait_for(Duration::from_secs(20), || {
        cuframes::stream_status("pk-late").is_ok()
    }));
    let mut late =
        cuframes::PacketSubscriber::connect("pk-late", "late", Mode::Queue, Default::default())
            .unwrap();
    let first = late.next_packet(Duration::from_secs(10)).unwrap();
    assert!(
        first.is_key() && first.seq() == 1,
        "the late ring's first packet (seq {}) is a keyframe: {}",
        first.seq(),
        first.is_key()
    );
    drop((first, late));
    assert!(publisher.wait().unwrap().success());
    // The source closed: the far side's stream closes, the recorder ends.
    let out = recorder.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "recorder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&recording)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&decoded.stderr);
    assert!(
        decoded.status.success() && errors.trim().is_empty(),
        "decode errors: {errors}"
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&recording)
        .output()
        .unwrap();
    let frames: u64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(frames >= 75, "{frames} of 100 frames recorded");
}

/// The benchmark runs (`--quick`) and measures every row.
#[test]
fn bench_measures_every_row() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_cuframes-bridge"))
        .with_file_name("examples")
        .join("bridge-bench");
    if !exe.is_file() {
        eprintln!("skipped: the bridge-bench example is not built");
        return;
    }
    let out = Command::new(&exe).arg("--quick").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("local ") || l.starts_with("bridge"))
        .collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    for row in rows {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let fps: f64 = fields[fields.len() - 6].parse().unwrap();
        assert!(fps > 0.0, "{row}");
    }
}

/// User and password authentication from a Zenoh configuration file: the
/// importer with the right password gets frames, one with a wrong
/// password gets none.
#[test]
fn user_password_authentication_is_enforced() {
    LazyLock::force(&SHM);
    let dir = SHM.join("usrpwd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("users.txt"),
        "camera:camera-secret\nanalytics:open-sesame\n",
    )
    .unwrap();
    let p = port();
    let file = |name: &str, body: String| {
        let f = dir.join(name);
        std::fs::write(&f, body).unwrap();
        f.display().to_string()
    };
    let common = r#"mode: "peer", scouting: { multicast: { enabled: false } }"#;
    let server = file(
        "server.json5",
        format!(
            r#"{{ {common}, listen: {{ endpoints: ["tcp/127.0.0.1:{p}"] }},
                 transport: {{ auth: {{ usrpwd: {{ user: "camera", password: "camera-secret",
                   dictionary_file: "{}" }} }} }} }}"#,
            dir.join("users.txt").display()
        ),
    );
    let client = |name: &str, password: &str| {
        file(
            name,
            format!(
                r#"{{ {common}, listen: {{ endpoints: [] }}, connect: {{ endpoints: ["tcp/127.0.0.1:{p}"] }},
                     transport: {{ auth: {{ usrpwd: {{ user: "analytics", password: "{password}" }} }} }} }}"#
            ),
        )
    };
    let right = client("right.json5", "open-sesame");
    let wrong = client("wrong.json5", "guess");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish("auth-src", None, 100, stop.clone());
    let _e = bridge(
        "exp",
        &[
            "export",
            "--key",
            "auth-src",
            "--as",
            "auth",
            "--zenoh-config",
            &server,
        ],
    );
    let _bad = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "auth",
            "--key",
            "auth-wrong",
            "--zenoh-config",
            &wrong,
        ],
    );
    let _good = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "auth",
            "--key",
            "auth-right",
            "--zenoh-config",
            &right,
        ],
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            cuframes::stream_status("auth-right").is_ok_and(|s| s.stats.published > 10)
        }),
        "frames with the right password"
    );
    // As long again, and more, for the refused one.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        cuframes::stream_status("auth-wrong").is_err(),
        "no frames with a wrong password"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
}

/// A peer that speaks the wire format but lies: a description asking for
/// a ring beyond `--max-ring-mb`, samples whose header claims 256 MiB,
/// the wrong size, another wire version, garbage. Each is refused and
/// counted; the importer goes on and publishes the honest frame after them.
#[test]
fn hostile_samples_are_refused_and_the_importer_goes_on() {
    use cuframes_bridge::wire::{Compression, Kind};
    use zenoh::Wait;
    LazyLock::force(&SHM);
    let p = port();
    let importer = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "evil",
            "--key",
            "evil-dst",
            "--mode",
            "lossless",
            "--listen",
            &endpoint(p),
            "--max-ring-mb",
            "64",
        ],
    );
    let peer = FakeExporter::connect("evil", p);
    let (meta, data) = (&peer.meta, &peer.data);
    // 64 slots of 8192x8192 RGBA: 16 GiB of shared memory.
    meta.put(raw_meta(1, "rgba8", 8192, 8192, 64).to_bytes())
        .wait()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cuframes::stream_status("evil-dst").is_err(),
        "no 16 GiB ring"
    );
    meta.put(raw_meta(2, "gray8", 64, 4, 4).to_bytes())
        .wait()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        cuframes::stream_status("evil-dst").is_ok()
    }));
    let mut reader =
        Subscriber::connect("evil-dst", "reader", Mode::Queue, Default::default()).unwrap();
    let sample = |len: u64, compression: Compression, payload: &[u8]| {
        frame_sample(Kind::Frame, 2, 1, len, compression, payload)
    };
    let mut other_version = sample(256, Compression::None, &[1; 256]);
    other_version[4] = 9;
    for evil in [
        sample(256 << 20, Compression::Lz4, &[0x1f, 0, 0, 0]),
        sample(100, Compression::None, &[1; 100]),
        other_version,
        b"garbage".to_vec(),
    ] {
        data.put(evil).wait().unwrap();
    }
    data.put(sample(256, Compression::None, &[7; 256]))
        .wait()
        .unwrap();
    let f = reader
        .next_frame(Duration::from_secs(10))
        .expect("the honest frame");
    assert!(f
        .plane(0)
        .chunks(f.pitch(0) as usize)
        .all(|row| row[..64].iter().all(|&b| b == 7)));
    drop(f);
    let report = importer.interrupt();
    assert!(
        report.contains("imported 1 ") && report.contains(" 4 refused"),
        "{report}"
    );
}

/// A test peer speaking the wire format as an exporter named `name`
/// would, connected to an importer listening on `port`.
struct FakeExporter {
    session: zenoh::Session,
    keys: cuframes_bridge::wire::Keys,
    meta: zenoh::pubsub::Publisher<'static>,
    data: zenoh::pubsub::Publisher<'static>,
}

impl FakeExporter {
    fn connect(name: &str, port: u16) -> Self {
        use zenoh::Wait;
        let mut config = zenoh::Config::default();
        for (k, v) in [
            ("scouting/multicast/enabled", "false".to_owned()),
            ("listen/endpoints", "[]".to_owned()),
            ("connect/endpoints", format!("[\"{}\"]", endpoint(port))),
        ] {
            config.insert_json5(k, &v).unwrap();
        }
        let session = zenoh::open(config).wait().unwrap();
        let keys = cuframes_bridge::wire::Keys::new(name);
        let meta = session.declare_publisher(keys.meta.clone()).wait().unwrap();
        let data = session.declare_publisher(keys.data.clone()).wait().unwrap();
        assert!(wait_for(Duration::from_secs(20), || {
            data.matching_status().wait().unwrap().matching()
        }));
        Self {
            session,
            keys,
            meta,
            data,
        }
    }
}

/// The description of a live raw stream.
fn raw_meta(
    epoch: u64,
    format: &str,
    width: u32,
    height: u32,
    slots: u32,
) -> cuframes_bridge::wire::Meta {
    use cuframes_bridge::wire::{Meta, State, Stream, WIRE_VERSION};
    Meta {
        version: WIRE_VERSION,
        epoch,
        state: State::Live,
        slots,
        stream: Stream::Frames {
            format: format.into(),
            width,
            height,
        },
    }
}

/// A data sample: header and payload.
fn frame_sample(
    kind: cuframes_bridge::wire::Kind,
    epoch: u64,
    flags: u64,
    len: u64,
    compression: cuframes_bridge::wire::Compression,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    cuframes_bridge::wire::Header {
        kind,
        compression,
        epoch,
        seq: 1,
        pts_ns: 0,
        dts_ns: 0,
        duration_ns: 0,
        flags,
        len,
        sent_ns: 0,
    }
    .encode(&mut out);
    out.extend_from_slice(payload);
    out
}

/// A reply to a description query sent before a stream's end can arrive
/// after its end marker: the importer does not bring the ended stream back.
#[test]
fn an_ended_stream_is_not_revived_by_a_stale_description() {
    use cuframes_bridge::wire::{end_flags, Compression, Kind, State};
    use zenoh::Wait;
    LazyLock::force(&SHM);
    let p = port();
    let _importer = bridge(
        "imp",
        &[
            "import",
            "--remote",
            "stale",
            "--key",
            "stale-dst",
            "--mode",
            "lossless",
            "--listen",
            &endpoint(p),
        ],
    );
    let peer = FakeExporter::connect("stale", p);
    // Every query is answered "live": the stale reply.
    let live = raw_meta(5, "gray8", 64, 4, 4).to_bytes();
    let answer = live.clone();
    let _queryable = peer
        .session
        .declare_queryable(peer.keys.meta.clone())
        .callback(move |q| {
            let _ = q.reply(q.key_expr().clone(), answer.clone()).wait();
        })
        .wait()
        .unwrap();
    peer.meta.put(live).wait().unwrap();
    assert!(wait_for(Duration::from_secs(10), || {
        cuframes::stream_status("stale-dst").is_ok()
    }));
    let mut reader =
        Subscriber::connect("stale-dst", "reader", Mode::Queue, Default::default()).unwrap();
    peer.data
        .put(frame_sample(
            Kind::Frame,
            5,
            0,
            256,
            Compression::None,
            &[3; 256],
        ))
        .wait()
        .unwrap();
    reader
        .next_frame(Duration::from_secs(10))
        .expect("the frame");
    peer.data
        .put(frame_sample(
            Kind::End,
            5,
            end_flags(State::Closed),
            0,
            Compression::None,
            &[],
        ))
        .wait()
        .unwrap();
    let e = reader.next_frame(Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.code(), cuframes::ErrorCode::Closed);
    drop(reader);
    // The importer asks again (twice a second) and hears "live".
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        cuframes::stream_status("stale-dst").is_err(),
        "the ended stream came back"
    );
}

/// Names become key expressions, so they follow the stream-key rule
/// (`InvalidArgument`, 5, before any network); malformed flag values are
/// usage errors (64), as for the cuframes CLI.
#[test]
fn bad_names_and_values_are_refused_before_any_network() {
    let status = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cuframes-bridge"))
            .args(args)
            .env("CUFRAMES_SHM_DIR", &*SHM)
            .output()
            .unwrap()
            .status
            .code()
    };
    for args in [
        &["export", "--key", "k", "--as", "a/**"][..],
        &["export", "--key", ""],
        &["import", "--remote", "", "--key", "k"],
        &["import", "--remote", "cam/*", "--key", "k"],
    ] {
        assert_eq!(status(args), Some(5), "{args:?}");
    }
    for args in [
        &["import", "--remote", "r", "--key", "k", "--slots", "1"][..],
        &["import", "--remote", "r", "--key", "k", "--slots", "65"],
        &["export", "--key", "k", "--zenoh-mode", "sideways"],
    ] {
        assert_eq!(status(args), Some(64), "{args:?}");
    }
}
