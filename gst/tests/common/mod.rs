//! Helpers for the process tests: where the plugin and the CLI are, a
//! private shm directory per test, gst-launch children.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `target/<profile>`, where cargo put `libgstcuframes.so`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// The plugin's directory (for `GST_PLUGIN_PATH`), or why the GStreamer
/// tests cannot run here. `cargo test` leaves the cdylib in
/// `target/<profile>/deps` (`cargo build` also in `target/<profile>`); it
/// is copied alone into `target/<profile>/gst-plugin/` so that GStreamer
/// does not scan every other library in `deps`.
pub fn plugin_dir() -> Result<PathBuf, String> {
    static DIR: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DIR.get_or_init(install_plugin).clone()
}

fn install_plugin() -> Result<PathBuf, String> {
    let profile = profile_dir();
    let newest = [
        profile.join("libgstcuframes.so"),
        profile.join("deps/libgstcuframes.so"),
    ]
    .into_iter()
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max()
    .map(|(_, p)| p)
    .ok_or_else(|| format!("no libgstcuframes.so in {} or its deps", profile.display()))?;
    let dir = profile.join("gst-plugin");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let so = dir.join("libgstcuframes.so");
    let same = |a: &Path, b: &Path| {
        std::fs::read(a)
            .ok()
            .zip(std::fs::read(b).ok())
            .is_some_and(|(x, y)| x == y)
    };
    if !same(&newest, &so) {
        // Copied beside and renamed: a test binary running at the same
        // time never sees half a library.
        let tmp = dir.join(format!(".libgstcuframes.{}.so", std::process::id()));
        std::fs::copy(&newest, &tmp).map_err(|e| format!("copy the plugin: {e}"))?;
        std::fs::rename(&tmp, &so).map_err(|e| format!("install the plugin: {e}"))?;
    }
    let inspect = Command::new("gst-inspect-1.0")
        .arg("cuframessink")
        .env("GST_PLUGIN_PATH", &dir)
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .output()
        .map_err(|e| {
            format!("gst-inspect-1.0 cannot run ({e}): GStreamer tools are not installed")
        })?;
    if !inspect.status.success() {
        return Err(format!(
            "gst-inspect-1.0 cannot load the plugin: {}",
            String::from_utf8_lossy(&inspect.stderr)
        ));
    }
    if Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("gst-launch-1.0 is not installed".into());
    }
    Ok(dir)
}

/// Skips the test (printing why) when GStreamer or the plugin is missing.
#[macro_export]
macro_rules! require_gst {
    () => {
        match common::plugin_dir() {
            Ok(d) => d,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
    };
}

/// The `cuframes` CLI built by `cargo build -p cuframes-cli`, if any.
pub fn cli() -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        dirs.push(PathBuf::from(t));
    }
    // The workspace target (this crate's own when built alone: ../target).
    let profile = profile_dir();
    if let Some(target) = profile.parent() {
        dirs.push(target.to_path_buf());
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dirs.push(manifest.join("../target"));
    for d in dirs {
        for p in ["debug", "release"] {
            let exe = d.join(p).join("cuframes");
            if exe.is_file() {
                return Some(exe);
            }
        }
    }
    None
}

/// Whether `gst-inspect-1.0 NAME` finds an element.
pub fn has_element(name: &str) -> bool {
    Command::new("gst-inspect-1.0")
        .arg("--exists")
        .arg(name)
        .status()
        .is_ok_and(|s| s.success())
}

/// The first H.264 encoder present, as a gst-launch fragment.
pub fn h264_encoder() -> Option<&'static str> {
    if has_element("x264enc") {
        Some("x264enc key-int-max=25 speed-preset=ultrafast")
    } else if has_element("openh264enc") {
        Some("openh264enc gop-size=25")
    } else {
        None
    }
}

/// A private shm directory and unique keys for one test.
pub struct Env {
    pub plugin: PathBuf,
    pub shm: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Env {
    pub fn new(plugin: PathBuf, name: &str) -> Self {
        let shm = std::env::temp_dir().join(format!(
            "cuframes-gst-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&shm);
        std::fs::create_dir_all(&shm).expect("shm dir");
        Self { plugin, shm }
    }

    fn envs(&self, c: &mut Command) {
        c.env("GST_PLUGIN_PATH", &self.plugin)
            .env("GST_REGISTRY", self.plugin.join("registry.bin"))
            .env("CUFRAMES_SHM_DIR", &self.shm);
    }

    /// `gst-launch-1.0 -m PIPELINE` with stdout and stderr captured.
    pub fn launch(&self, pipeline: &str) -> Child {
        let mut c = Command::new("gst-launch-1.0");
        c.arg("-m").args(pipeline.split_whitespace());
        self.envs(&mut c);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gst-launch-1.0")
    }

    /// The `cuframes` CLI with these arguments.
    pub fn cli(&self, exe: &Path, args: &[&str]) -> Child {
        let mut c = Command::new(exe);
        c.args(args);
        self.envs(&mut c);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cuframes")
    }

    pub fn cli_output(&self, exe: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(exe);
        c.args(args);
        self.envs(&mut c);
        c.output().expect("run cuframes")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.shm.join(name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.shm);
    }
}

/// Waits for a child up to `limit`; kills it past that. Returns its
/// output and whether it exited by itself with status 0.
pub fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                return (false, text(&out) + "\n[killed: ran past the limit]");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("output");
    (out.status.success(), text(&out))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The SHA-1 column of `checksumsink` lines (`H:MM:SS.NNNNNNNNN <sha1>`).
pub fn checksums(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| {
            let (ts, sum) = l.trim().split_once(' ')?;
            (ts.contains(':') && sum.len() == 40 && sum.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| sum.to_owned())
        })
        .collect()
}

/// A `u64` field of an element message printed by `gst-launch-1.0 -m`.
pub fn message_field(output: &str, message: &str, field: &str) -> Option<u64> {
    let line = output.lines().rev().find(|l| l.contains(message))?;
    let at = line.find(&format!("{field}=(guint64)"))? + field.len() + "=(guint64)".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Waits until a file exists (a stream appeared).
pub fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Frames ffprobe decodes in a file, if ffprobe is installed.
pub fn ffprobe_frames(file: &Path) -> Option<u64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "default=nokey=1:noprint_wrappers=1",
        ])
        .arg(file)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
