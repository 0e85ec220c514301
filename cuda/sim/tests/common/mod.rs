//! Shared pieces of the simulator's tests: every scenario runs in a child
//! process of its own (the simulator's state is per process and reads its
//! environment once), with a state directory of its own.
#![allow(dead_code)]

pub use cuframes_cuda_sim as cu;
pub use cuframes_cuda_sim::sys::{self, CUresult};
use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const ROLE: &str = "CFSIM_TEST_ROLE";
pub const OK: CUresult = CUresult::CUDA_SUCCESS;

/// Calls an entry point.
#[macro_export]
macro_rules! call {
    ($e:expr) => {{
        #[allow(unused_unsafe)]
        // SAFETY: test calls pass valid pointers and handles except where a
        // test passes a bad one on purpose, which the simulator checks
        // before touching memory.
        let r = unsafe { $e };
        r
    }};
}

/// Calls an entry point that must succeed.
#[macro_export]
macro_rules! ck {
    ($e:expr) => {
        assert_eq!($crate::call!($e), $crate::common::OK, "{}", stringify!($e))
    };
}

/// Calls an entry point that must fail with `code`.
#[macro_export]
macro_rules! fails {
    ($code:ident, $e:expr) => {
        assert_eq!(
            $crate::call!($e),
            $crate::common::sys::CUresult::$code,
            "{}",
            stringify!($e)
        )
    };
}

/// What a scenario process did.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub violations: Vec<String>,
}

impl Outcome {
    pub fn show(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- violations\n{}",
            self.status,
            self.stdout,
            self.stderr,
            self.violations.join("\n")
        )
    }

    /// The scenario passed and logged exactly one violation per entry of
    /// `want` (each line contains its entry).
    pub fn passed_with(&self, want: &[&str]) {
        assert!(self.status.success(), "{}", self.show());
        assert_eq!(self.violations.len(), want.len(), "{}", self.show());
        for w in want {
            assert!(
                self.violations.iter().any(|v| v.contains(w)),
                "no violation containing {w:?}\n{}",
                self.show()
            );
        }
    }
}

fn seed() -> String {
    std::env::var("CUFRAMES_SIM_SEED").unwrap_or_else(|_| "42".into())
}

/// A fresh state directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "cfsim-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The command that runs scenario `role` in this test binary.
pub fn child_cmd(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role);
    c
}

/// The arguments that run scenario `role`, for a wrapper (unshare).
pub fn child_args() -> Vec<String> {
    let mut v = vec![std::env::current_exe()
        .unwrap()
        .to_string_lossy()
        .into_owned()];
    v.extend(["child_entry", "--exact", "--nocapture", "--test-threads=1"].map(String::from));
    v
}

/// Runs scenario `role` in a child with its own state directory.
pub fn run(role: &str, env: &[(&str, &str)]) -> Outcome {
    let dir = temp_dir(role);
    let mut c = child_cmd(role);
    c.env("CUFRAMES_SIM_DIR", &dir)
        .env("CUFRAMES_SIM_SEED", seed())
        .env("CUFRAMES_SIM_DELAY_US", "300")
        .env("CUFRAMES_SIM_HANG_S", "60")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("CUFRAMES_SIM_NO_VMM")
        .env_remove("CUFRAMES_SIM_DEVICES");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let violations = std::fs::read_to_string(dir.join("violations.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        violations,
    }
}

/// Spawns scenario `role` from inside a scenario (same state directory),
/// stdin and stdout piped.
pub fn spawn(role: &str, env: &[(&str, String)]) -> Child {
    let mut c = child_cmd(role);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

pub fn lines(kid: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(kid.stdout.take().unwrap()).lines()
}

/// Reads lines until one contains `want`.
pub fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, want: &str) {
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains(want) {
            return;
        }
    }
    panic!("child ended without printing {want:?}");
}

/// Waits for a spawned scenario and checks it passed and printed `want`.
pub fn finish(kid: Child, want: &str) {
    let out = kid.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        want.is_empty() || text.contains(want),
        "child did not print {want:?}:\n{text}"
    );
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------- driver helpers

/// cuInit, and the primary context of device 0 made current.
pub fn init() -> sys::CUcontext {
    ck!(cu::cuInit(0));
    ctx_of(0)
}

/// The primary context of `dev`, retained and pushed.
pub fn ctx_of(dev: i32) -> sys::CUcontext {
    let mut ctx = std::ptr::null_mut();
    ck!(cu::cuDevicePrimaryCtxRetain(&mut ctx, dev));
    ck!(cu::cuCtxPushCurrent_v2(ctx));
    ctx
}

pub fn alloc(n: usize) -> u64 {
    let mut d = 0;
    ck!(cu::cuMemAlloc_v2(&mut d, n));
    d
}

pub fn stream(flags: u32) -> sys::CUstream {
    let mut s = std::ptr::null_mut();
    ck!(cu::cuStreamCreate(&mut s, flags));
    s
}

pub fn htod(d: u64, data: &[u8]) {
    ck!(cu::cuMemcpyHtoD_v2(d, data.as_ptr().cast(), data.len()));
}

pub fn dtoh(d: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ck!(cu::cuMemcpyDtoH_v2(v.as_mut_ptr().cast(), d, n));
    v
}

pub fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u64 * 7 + seed as u64 * 31) % 251) as u8 + 1)
        .collect()
}

pub fn query(s: sys::CUstream) -> CUresult {
    call!(cu::cuStreamQuery(s))
}

/// Page-locked host memory of `n` bytes (zeroed).
pub fn pinned(n: usize) -> *mut u8 {
    let mut p = std::ptr::null_mut();
    ck!(cu::cuMemAllocHost_v2(&mut p, n));
    p.cast()
}

/// Reads a byte that a stream worker may be writing.
pub fn peek(p: *const u8) -> u8 {
    // SAFETY: `p` points into live memory of the test; volatile so the
    // read happens now.
    unsafe { p.read_volatile() }
}

pub fn sim_dir() -> PathBuf {
    PathBuf::from(std::env::var("CUFRAMES_SIM_DIR").unwrap())
}

/// The violations logged so far in this scenario's state directory.
pub fn violations_now() -> String {
    std::fs::read_to_string(sim_dir().join("violations.log")).unwrap_or_default()
}

pub fn ipc_mem_handle(d: u64) -> sys::CUipcMemHandle {
    let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
    ck!(cu::cuIpcGetMemHandle(&mut h, d));
    h
}

pub fn handle_hex(raw: &[std::ffi::c_char; 64]) -> String {
    hex(&raw.map(|c| c as u8))
}

pub fn handle_raw(s: &str) -> [std::ffi::c_char; 64] {
    let v = unhex(s);
    let mut out = [0 as std::ffi::c_char; 64];
    for (o, b) in out.iter_mut().zip(v) {
        *o = b as std::ffi::c_char;
    }
    out
}
