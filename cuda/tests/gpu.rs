//! GPU tests, across real processes. They run with `CUFRAMES_GPU=1`: on a
//! machine with an NVIDIA GPU, or under the strict driver simulator
//! (`scripts/cuda-sim.sh cargo test -p cuframes-cuda --test gpu`), which
//! the test command does on every run.
//!
//! Publishers and subscribers are separate processes (this binary run
//! again with a role in `CUFRAMES_GPU_CHILD`), as CUDA IPC requires. Every
//! frame is checked byte for byte after copies that the test enqueues
//! itself and releases before they ran, so a missing GPU wait on either
//! side shows as a wrong byte.

use cudarc::driver::sys;
use cuframes::{LosslessPolicy, Mode, PixelFormat, PublisherOptions, SubscriberOptions};
use cuframes_cuda::*;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD: &str = "CUFRAMES_GPU_CHILD";
const W: u32 = 1280;
const H: u32 = 720;

fn enabled() -> bool {
    if std::env::var("CUFRAMES_GPU").as_deref() == Ok("1") {
        return true;
    }
    println!(
        "skipped: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU, or run scripts/cuda-sim.sh"
    );
    false
}

/// A shm directory of this test process (children get it through the
/// environment), so concurrent runs never share keys.
fn shm_dir() {
    if std::env::var_os(CHILD).is_some() {
        return; // inherited from the test process
    }
    // tmpfs, as in production: the driver pins the sync region's pages.
    let dir =
        std::path::PathBuf::from(format!("/dev/shm/cuframes-cuda-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
}

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((seq.wrapping_mul(31) + i as u64 * 7) % 251) as u8)
        .collect()
}

fn ck(what: &str, r: sys::CUresult) {
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{what}");
}

/// Raw driver calls the tests make themselves, as an application would.
mod drv {
    use super::ck;
    use cudarc::driver::sys;

    /// The primary context of `ordinal`, current on this thread.
    pub fn enter(ordinal: u32) {
        let mut dev: sys::CUdevice = 0;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: plain driver calls with valid out-pointers; the context
        // stays retained (and current) for the life of the test process.
        unsafe {
            ck("cuInit", sys::cuInit(0));
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal as i32));
            ck("retain", sys::cuDevicePrimaryCtxRetain(&mut ctx, dev));
            ck("current", sys::cuCtxSetCurrent(ctx));
        }
    }

    /// A new non-blocking stream of the current context.
    pub fn stream() -> sys::CUstream {
        let mut s: sys::CUstream = std::ptr::null_mut();
        // SAFETY: writes one stream handle; a context is current.
        unsafe { ck("cuStreamCreate", sys::cuStreamCreate(&mut s, 1)) };
        s
    }

    pub fn sync(s: sys::CUstream) {
        // SAFETY: `s` is a live stream.
        unsafe { ck("cuStreamSynchronize", sys::cuStreamSynchronize(s)) };
    }

    /// `len` bytes of page-locked host memory (never freed: test process).
    pub fn pinned(len: usize) -> &'static mut [u8] {
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer to `len` bytes the driver allocated
        // for us; we never free it, so the slice may be 'static.
        unsafe {
            ck("cuMemAllocHost", sys::cuMemAllocHost_v2(&mut p, len));
            std::slice::from_raw_parts_mut(p.cast(), len)
        }
    }

    /// `len` bytes of device memory (never freed: test process).
    pub fn device(len: usize) -> u64 {
        let mut d = 0;
        // SAFETY: writes one device pointer.
        unsafe { ck("cuMemAlloc", sys::cuMemAlloc_v2(&mut d, len)) };
        d
    }

    /// Keeps `s` busy for a while: large memsets of a scratch buffer.
    pub fn busy(s: sys::CUstream, scratch: u64, len: usize, times: usize) {
        for _ in 0..times {
            // SAFETY: the scratch buffer is ours, `len` bytes long.
            unsafe { ck("busy", sys::cuMemsetD8Async(scratch, 0x5a, len, s)) };
        }
    }

    /// Fills `len` device bytes at `ptr` with `v` on `s`.
    pub fn fill(s: sys::CUstream, ptr: u64, len: usize, v: u8) {
        // SAFETY: the caller passes a range it may write on `s`.
        unsafe { ck("fill", sys::cuMemsetD8Async(ptr, v, len, s)) };
    }

    /// Makes `s` wait forever: on a word of pinned host memory that is
    /// never written.
    pub fn stall(s: sys::CUstream) {
        let word = pinned(64);
        let mut d = 0;
        // SAFETY: `word` is page-locked memory allocated by the driver,
        // mapped for the device; we wait for it to become 1, which never
        // happens.
        unsafe {
            ck(
                "devptr",
                sys::cuMemHostGetDevicePointer_v2(&mut d, word.as_mut_ptr().cast(), 0),
            );
            ck("wait", sys::cuStreamWaitValue64_v2(s, d, 1, 0));
        }
    }

    /// Enqueues 2D copies of `planes` (device pointer, pitch, row bytes,
    /// rows) into `dst`, tightly packed, on `s`.
    pub fn copy_planes(s: sys::CUstream, planes: &[(u64, usize, usize, usize)], dst: &mut [u8]) {
        let mut at = 0usize;
        for &(ptr, pitch, row, rows) in planes {
            assert!(at + row * rows <= dst.len());
            let c = sys::CUDA_MEMCPY2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: ptr,
                srcArray: std::ptr::null_mut(),
                srcPitch: pitch,
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
                // SAFETY: in bounds (asserted above).
                dstHost: unsafe { dst.as_mut_ptr().add(at) }.cast(),
                dstDevice: 0,
                dstArray: std::ptr::null_mut(),
                dstPitch: row,
                WidthInBytes: row,
                Height: rows,
            };
            // SAFETY: the source is a frame plane the caller holds, the
            // destination `row * rows` bytes of `dst`, which outlives the
            // copy (the caller synchronises before reading it).
            unsafe { ck("copy", sys::cuMemcpy2DAsync_v2(&c, s)) };
            at += row * rows;
        }
    }
}

fn spawn_with(role: &str, key: &str, frames: u64, env: &[(&str, &str)], wrap: &[&str]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(["gpu_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{role},{key},{frames}"))
        .env("CUFRAMES_GPU", "1")
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn spawn(role: &str, key: &str, frames: u64) -> Child {
    spawn_with(role, key, frames, &[], &[])
}

fn lines(kid: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(kid.stdout.take().unwrap()).lines()
}

/// Reads `lines` until one contains `what`; panics if the child ends first.
fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    for l in lines.by_ref() {
        let l = l.unwrap();
        if l.contains(what) {
            return l;
        }
    }
    panic!("child ended before printing {what:?}");
}

fn finish(kid: Child, want: &str) {
    let out = kid.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(want), "{text}");
}

fn options(export: ExportRequest, slots: u32, policy: LosslessPolicy) -> CudaPublisherOptions {
    CudaPublisherOptions {
        ring: PublisherOptions {
            slot_count: slots,
            policy,
            block_timeout: Duration::from_secs(20),
            ..Default::default()
        },
        export,
        ..Default::default()
    }
}

/// A publisher, with its device's context current on this thread (for
/// the raw calls `publish` makes).
fn publisher(key: &str, export: ExportRequest, slots: u32) -> CudaPublisher {
    let opts = options(export, slots, LosslessPolicy::Block);
    let p = CudaPublisher::create(key, PixelFormat::Nv12, W, H, opts).unwrap();
    drv::enter(p.device());
    p
}

/// Waits for `kids` to subscribe, publishes frames 1..=`frames`, and
/// checks that every child succeeded and printed `want`.
fn publish_to(p: &mut CudaPublisher, kids: Vec<Child>, frames: u64, want: &str) {
    wait_subscribers(p, kids.len());
    for seq in 1..=frames {
        publish(p, seq);
    }
    for kid in kids {
        finish(kid, want);
    }
}

fn wait_subscribers(p: &CudaPublisher, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.host().stats().active().count() < n {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes frame `seq`: odd frames straight from host memory; even ones
/// through a loan whose slot is first filled with 0xEE by a large memset on
/// the publisher's stream, so a subscriber that does not wait for the
/// publisher's writes reads 0xEE (or the slot's previous frame).
fn publish(p: &mut CudaPublisher, seq: u64) {
    let len = p.layout().packed_bytes() as usize;
    let slot_bytes = p.layout().slot_bytes as usize;
    let data = pattern(seq, len);
    let got = if seq % 2 == 1 {
        p.publish_from_host(&data, seq as i64).unwrap()
    } else {
        let lease = p.loan().unwrap();
        assert_eq!(lease.plane(0).pitch % 512, 0);
        drv::fill(lease.stream(), lease.plane(0).ptr, slot_bytes, 0xee);
        lease.copy_from_host(&data).unwrap();
        lease.commit(seq as i64).unwrap()
    };
    assert_eq!(got, seq);
}

/// The test's view of a frame's planes, for `drv::copy_planes`.
fn planes_of(f: &CudaFrame) -> Vec<(u64, usize, usize, usize)> {
    f.layout()
        .planes()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                f.device_ptr(i),
                f.pitch(i) as usize,
                p.row_bytes as usize,
                p.rows as usize,
            )
        })
        .collect()
}

fn sub_options() -> CudaSubscriberOptions {
    CudaSubscriberOptions {
        ring: SubscriberOptions {
            connect_timeout: Duration::from_secs(20),
            max_held: 1,
            ..Default::default()
        },
        device: None,
    }
}

/// A consumer that checks every frame byte for byte, on its own stream:
/// busy work first, then copies out, then the release (before the copies
/// ran: the release must make the publisher wait for them).
struct Checker {
    stream: sys::CUstream,
    host: &'static mut [u8],
    scratch: u64,
}

const SCRATCH: usize = 16 << 20;

impl Checker {
    fn new(ordinal: u32, len: usize) -> Self {
        drv::enter(ordinal);
        Checker {
            stream: drv::stream(),
            host: drv::pinned(len),
            scratch: drv::device(SCRATCH),
        }
    }

    /// Checks `f` against `pattern(f.seq())` and releases it early.
    fn check(&mut self, f: CudaFrame) -> u64 {
        assert_eq!(f.consumer_stream(), self.stream);
        let seq = f.seq();
        drv::busy(self.stream, self.scratch, SCRATCH, 2);
        drv::copy_planes(self.stream, &planes_of(&f), self.host);
        f.release();
        drv::sync(self.stream);
        let want = pattern(seq, self.host.len());
        if self.host[..] != want[..] {
            let at = self.host.iter().zip(&want).position(|(a, b)| a != b);
            panic!("frame {seq} differs from byte {at:?}");
        }
        seq
    }

    fn subscribe(&self, key: &str, name: &str, mode: Mode) -> CudaSubscriber {
        self.subscribe_with(key, name, mode, sub_options())
    }

    fn subscribe_with(
        &self,
        key: &str,
        name: &str,
        mode: Mode,
        opts: CudaSubscriberOptions,
    ) -> CudaSubscriber {
        let mut sub = CudaSubscriber::connect(key, name, mode, opts).unwrap();
        // SAFETY: our stream lives for the whole test process.
        unsafe { sub.set_consumer_stream(self.stream) };
        sub
    }
}

fn frame_len() -> usize {
    (W * H * 3 / 2) as usize
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`
/// (a GPU wait that never ends would otherwise hang the suite).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Publisher writes a known pattern (host copies and in-place loans behind
/// large memsets, both on its stream); two subscriber processes check every
/// byte on their own streams, releasing each frame before their copy ran.
#[test]
fn two_subscribers_verify_every_byte() {
    if !enabled() {
        return;
    }
    shm_dir();
    for (i, export) in [ExportRequest::Ipc, ExportRequest::VmmFd]
        .into_iter()
        .enumerate()
    {
        let key = format!("gpu-verify-{i}");
        let frames = 200u64;
        let mut p = publisher(&key, export, 4);
        let kids = vec![spawn("verify", &key, frames), spawn("verify", &key, frames)];
        publish_to(&mut p, kids, frames, &format!("VERIFIED {frames}"));
    }
}

/// Newest-only readers and a drop-oldest ring on the GPU: whatever frames
/// a reader gets, in whatever order the ring skips, are intact.
#[test]
fn newest_only_and_drop_oldest() {
    if !enabled() {
        return;
    }
    shm_dir();
    let key = "gpu-lossy";
    let frames = 150u64;
    let opts = options(ExportRequest::Auto, 4, LosslessPolicy::DropOldest);
    let mut p = CudaPublisher::create(key, PixelFormat::Nv12, W, H, opts).unwrap();
    drv::enter(p.device());
    let kids = vec![spawn("newest", key, frames), spawn("lossy", key, frames)];
    publish_to(&mut p, kids, frames, &format!("LAST {frames}"));
}

/// A decoder-style publisher writes on a stream of its own
/// ([`CudaPublisher::set_stream`]) from a page-locked buffer it reuses.
#[test]
fn publisher_writes_on_its_own_stream() {
    if !enabled() {
        return;
    }
    shm_dir();
    let key = "gpu-own-stream";
    let frames = 60u64;
    let mut p = publisher(key, ExportRequest::Auto, 3);
    drv::enter(p.device());
    let decoder = drv::stream();
    // SAFETY: the stream is live for the whole test process.
    unsafe { p.set_stream(decoder) };
    let kid = spawn("verify", key, frames);
    wait_subscribers(&p, 1);
    let len = frame_len();
    let staging = drv::pinned(len);
    for seq in 1..=frames {
        // The staging buffer is read by the previous frame's copies until
        // the stream passes them.
        drv::sync(decoder);
        staging.copy_from_slice(&pattern(seq, len));
        let lease = p.loan().unwrap();
        assert_eq!(lease.stream(), decoder);
        drv::fill(decoder, lease.plane(0).ptr, p_slot_bytes(&lease), 0xee);
        lease.copy_from_host(staging).unwrap();
        assert_eq!(lease.commit(seq as i64).unwrap(), seq);
    }
    finish(kid, &format!("VERIFIED {frames}"));
}

/// Frames already in device memory (a decoder's output, a tensor) copied
/// into loans after the producer's stream.
#[test]
fn publish_from_device_memory() {
    if !enabled() {
        return;
    }
    shm_dir();
    let key = "gpu-from-device";
    let frames = 40u64;
    let mut p = publisher(key, ExportRequest::Auto, 3);
    let producer = drv::stream();
    let len = frame_len();
    let src = drv::device(len);
    let kid = spawn("verify", key, frames);
    wait_subscribers(&p, 1);
    for seq in 1..=frames {
        // The previous frame's copy out of `src` runs on the publisher's
        // stream: wait for it before the producer overwrites `src`.
        drv::sync(p.stream());
        let data = pattern(seq, len);
        // SAFETY: `src` is `len` bytes of our device memory; pageable
        // sources are staged at the call.
        unsafe {
            ck(
                "upload",
                sys::cuMemcpyHtoDAsync_v2(src, data.as_ptr().cast(), len, producer),
            )
        };
        let lease = p.loan().unwrap();
        let mut at = 0u64;
        let planes: Vec<DevicePlane> = lease
            .layout()
            .planes()
            .iter()
            .map(|pl| {
                let d = DevicePlane {
                    ptr: src + at,
                    pitch: pl.row_bytes,
                    row_bytes: pl.row_bytes,
                    rows: pl.rows,
                };
                at += u64::from(pl.row_bytes) * u64::from(pl.rows);
                d
            })
            .collect();
        // A wrong shape is refused before anything is enqueued.
        // SAFETY: as below (and nothing is read: the call refuses).
        let e = unsafe { lease.copy_from_device(&planes[..1], producer) }.unwrap_err();
        assert_eq!(e.code(), cuframes::ErrorCode::InvalidArgument);
        // SAFETY: the planes lie in `src`, unchanged until the publisher's
        // stream has copied them (synchronised above, next round).
        unsafe { lease.copy_from_device(&planes, producer) }.unwrap();
        assert_eq!(lease.commit(seq as i64).unwrap(), seq);
    }
    finish(kid, &format!("VERIFIED {frames}"));
}

fn p_slot_bytes(lease: &CudaWriteLease<'_>) -> usize {
    lease.layout().slot_bytes as usize
}

/// Device ordinals differ between processes (`CUDA_VISIBLE_DEVICES`, or
/// containers): the subscriber finds the publisher's GPU by UUID.
#[test]
fn remapped_device_ordinals() {
    if !enabled() {
        return;
    }
    if device_count().unwrap() < 2 {
        println!("skipped: needs two GPUs");
        return;
    }
    shm_dir();
    let key = "gpu-remap";
    // The publisher sees only the second GPU, as its device 0.
    let mut kid = spawn_with("publish", key, 30, &[("CUDA_VISIBLE_DEVICES", "1")], &[]);
    let mut out = lines(&mut kid);
    expect_line(&mut out, "READY");
    // Asking for our device 0 is refused: it is not the publisher's GPU.
    let wrong = CudaSubscriberOptions {
        device: Some(0),
        ..sub_options()
    };
    let e = CudaSubscriber::connect(key, "wrong", Mode::Queue, wrong).unwrap_err();
    assert_eq!(e.code(), cuframes::ErrorCode::Cuda, "{e}");
    assert!(e.message().contains("not the publisher's GPU"), "{e}");
    let mut c = Checker::new(1, frame_len());
    let mut sub = c.subscribe(key, "remapped", Mode::Queue);
    assert_eq!(sub.device(), 1);
    for want in 1..=30 {
        let f = sub.next_frame(Duration::from_secs(20)).unwrap();
        assert_eq!(c.check(f), want);
    }
    drop(sub);
    assert!(kid.wait().unwrap().success());
}

/// Two subscribers of one legacy-IPC stream in one process (the driver maps
/// a handle once per process), and a subscriber in the publisher's own
/// process (the driver refuses to open a handle where it was made).
#[test]
fn several_subscribers_in_one_process() {
    if !enabled() {
        return;
    }
    shm_dir();
    let key = "gpu-same-process";
    let frames = 40u64;
    let mut p = publisher(key, ExportRequest::Ipc, 5);
    let kid = spawn("verify-pair", key, frames);
    wait_subscribers(&p, 2);
    let own = std::thread::spawn({
        let key = key.to_owned();
        move || {
            let mut c = Checker::new(0, frame_len());
            let mut sub = c.subscribe(&key, "own-process", Mode::Queue);
            for want in 1..=frames {
                let f = sub.next_frame(Duration::from_secs(20)).unwrap();
                assert_eq!(c.check(f), want);
            }
        }
    });
    wait_subscribers(&p, 3);
    for seq in 1..=frames {
        publish(&mut p, seq);
    }
    own.join().unwrap();
    finish(kid, &format!("VERIFIED {frames}"));
}

/// A subscriber killed with SIGKILL while holding a frame leaves nothing
/// held: its slot comes back and the publisher keeps publishing.
#[test]
fn kill_9_of_a_subscriber_leaves_nothing_held() {
    if !enabled() {
        return;
    }
    shm_dir();
    for (i, export) in [ExportRequest::Ipc, ExportRequest::VmmFd]
        .into_iter()
        .enumerate()
    {
        let key = format!("gpu-kill-{i}");
        let mut p = publisher(&key, export, 3);
        let mut kid = spawn("hold", &key, 0);
        wait_subscribers(&p, 1);
        publish(&mut p, 1);
        expect_line(&mut lines(&mut kid), "HOLDING");
        assert_eq!(p.host().stats().active().map(|s| s.held).sum::<u32>(), 1);
        kid.kill().unwrap(); // SIGKILL
        kid.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.host().stats().active().count() > 0 {
            assert!(Instant::now() < deadline, "dead subscriber not swept");
            std::thread::sleep(Duration::from_millis(20));
        }
        for seq in 2..50 {
            publish(&mut p, seq);
        }
        assert_eq!(p.host().stats().occupancy, 0);
    }
}

/// A subscriber killed after releasing a frame whose reads never finish
/// (its stream is stalled) must not stop the publisher: its release is
/// settled once it is dead, while a healthy subscriber gets every frame.
#[test]
fn subscriber_killed_with_a_release_pending() {
    if !enabled() {
        return;
    }
    shm_dir();
    for (i, export) in [ExportRequest::Ipc, ExportRequest::VmmFd]
        .into_iter()
        .enumerate()
    {
        let key = format!("gpu-stalled-{i}");
        let frames = 60u64;
        let mut p = publisher(&key, export, 4);
        let mut stalled = spawn("stall", &key, 0);
        let healthy = spawn("verify", &key, frames);
        wait_subscribers(&p, 2);
        publish(&mut p, 1);
        expect_line(&mut lines(&mut stalled), "RELEASED");
        // Slot 0 comes round again at frame 5: the publisher's stream then
        // waits for the stalled reader, and so does the publisher's thread
        // (a copy from pageable memory may wait for the stream). Only the
        // reader's death, noticed by another thread, can end that.
        let publishing = std::thread::spawn(move || {
            drv::enter(p.device());
            for seq in 2..=frames {
                publish(&mut p, seq);
            }
            p
        });
        std::thread::sleep(Duration::from_millis(300));
        stalled.kill().unwrap();
        stalled.wait().unwrap();
        let p = within(Duration::from_secs(60), "publishing", move || {
            publishing.join().unwrap()
        });
        assert_eq!(p.host().stats().head_seq, frames);
        finish(healthy, &format!("VERIFIED {frames}"));
    }
}

/// A publisher killed with SIGKILL while subscribers hold its frames and
/// wait (on the GPU) for one it never finished: no stream of the
/// subscriber waits forever, held frames of a VMM stream stay readable,
/// and the subscriber is told `PublisherGone`.
#[test]
fn publisher_kill_9_with_frames_held() {
    if !enabled() {
        return;
    }
    shm_dir();
    for (i, export) in ["ipc", "vmm-fd"].into_iter().enumerate() {
        let key = format!("gpu-pubkill-{i}");
        let mut kid = spawn_with("publish-stall", &key, 5, &[("EXPORT", export)], &[]);
        let mut out = lines(&mut kid);
        expect_line(&mut out, "READY");
        let mut c = Checker::new(0, frame_len());
        let mut opts = sub_options();
        opts.ring.max_held = 3;
        let mut sub = c.subscribe_with(&key, "holder", Mode::Queue, opts);
        let first = sub.next_frame(Duration::from_secs(20)).unwrap();
        assert_eq!(first.copy_to_host().unwrap(), pattern(1, frame_len()));
        let mut held = vec![first];
        for want in 2..=5 {
            let f = sub.next_frame(Duration::from_secs(20)).unwrap();
            assert_eq!(c.check(f), want);
        }
        expect_line(&mut out, "COMMITTED 6");
        // Frame 6 is published on the host but never finished on the GPU:
        // our stream waits for it.
        held.push(sub.next_frame(Duration::from_secs(20)).unwrap());
        kid.kill().unwrap();
        kid.wait().unwrap();
        let e = sub.next_frame(Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.code(), cuframes::ErrorCode::PublisherGone, "{e}");
        let stream = c.stream as usize;
        within(Duration::from_secs(10), "the consumer stream", move || {
            drv::sync(stream as sys::CUstream)
        });
        if export == "vmm-fd" {
            // VMM memory lives while we map it.
            assert_eq!(held[0].copy_to_host().unwrap(), pattern(1, frame_len()));
        }
        within(
            Duration::from_secs(10),
            "releasing and closing",
            move || {
                drop(held);
                drop(sub);
            },
        );
    }
}

/// vmm-fd mode works across pid (and user) namespaces, as between
/// containers; legacy IPC is refused there, with a clear error.
#[test]
fn vmm_fd_across_pid_namespaces() {
    if !enabled() {
        return;
    }
    let unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork"];
    let probe = Command::new(unshare[0])
        .args(&unshare[1..])
        .arg("true")
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("skipped: unshare of user and pid namespaces is not permitted here");
        return;
    }
    shm_dir();
    let frames = 40u64;
    let mut p = publisher("gpu-ns-vmm", ExportRequest::VmmFd, 3);
    let kid = spawn_with("verify", "gpu-ns-vmm", frames, &[], &unshare);
    publish_to(&mut p, vec![kid], frames, &format!("VERIFIED {frames}"));

    let _ipc = publisher("gpu-ns-ipc", ExportRequest::Ipc, 3);
    let kid = spawn_with("expect-error", "gpu-ns-ipc", 0, &[], &unshare);
    finish(kid, "ERROR Cuda");
}

/// Child processes (run by the tests above).
#[test]
fn gpu_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut it = spec.split(',');
    let (role, key, frames) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap().parse::<u64>().unwrap(),
    );
    shm_dir();
    let name = format!("{role}-{}", std::process::id());
    match role {
        "verify" => {
            let mut c = Checker::new(0, frame_len());
            let mut sub = c.subscribe(key, &name, Mode::Queue);
            for want in 1..=frames {
                let f = sub.next_frame(Duration::from_secs(20)).unwrap();
                assert_eq!(c.check(f), want, "queue mode delivers every frame in order");
            }
            println!("VERIFIED {frames}");
        }
        "verify-pair" => {
            let mut c = Checker::new(0, frame_len());
            let mut a = c.subscribe(key, "pair-a", Mode::Queue);
            let mut b = c.subscribe(key, "pair-b", Mode::Queue);
            for want in 1..=frames {
                for sub in [&mut a, &mut b] {
                    let f = sub.next_frame(Duration::from_secs(20)).unwrap();
                    assert_eq!(c.check(f), want);
                }
            }
            println!("VERIFIED {frames}");
        }
        "newest" | "lossy" => {
            let mode = if role == "newest" {
                Mode::NewestOnly
            } else {
                Mode::Queue
            };
            let mut c = Checker::new(0, frame_len());
            let mut sub = c.subscribe(key, &name, mode);
            let mut last = 0;
            while last < frames {
                let f = sub.next_frame(Duration::from_secs(20)).unwrap();
                let seq = c.check(f);
                assert!(seq > last, "{seq} after {last}");
                last = seq;
                if role == "lossy" {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            println!("LAST {last} dropped {}", sub.stats().dropped);
        }
        "hold" => {
            let mut sub =
                CudaSubscriber::connect(key, "holder", Mode::NewestOnly, sub_options()).unwrap();
            let f = sub.next_frame(Duration::from_secs(20)).unwrap();
            println!("HOLDING {}", f.seq());
            std::thread::sleep(Duration::from_secs(120));
        }
        "stall" => {
            drv::enter(0);
            let stream = drv::stream();
            let mut sub =
                CudaSubscriber::connect(key, &name, Mode::NewestOnly, sub_options()).unwrap();
            // SAFETY: the stream lives as long as this process.
            unsafe { sub.set_consumer_stream(stream) };
            let f = sub.next_frame(Duration::from_secs(20)).unwrap();
            drv::stall(stream);
            f.release();
            println!("RELEASED");
            std::thread::sleep(Duration::from_secs(120));
        }
        "publish" | "publish-stall" => {
            let export = match std::env::var("EXPORT").as_deref() {
                Ok("ipc") => ExportRequest::Ipc,
                Ok("vmm-fd") => ExportRequest::VmmFd,
                _ => ExportRequest::Auto,
            };
            let mut p = publisher(key, export, 8);
            println!("READY");
            wait_subscribers(&p, 1);
            for seq in 1..=frames {
                publish(&mut p, seq);
            }
            if role == "publish-stall" {
                // Frame 6 is committed on the host while the stream can
                // never reach its writes.
                drv::enter(p.device());
                drv::stall(p.stream());
                // Only asynchronous work: a copy from pageable memory
                // could wait for the (stalled) stream.
                let lease = p.loan().unwrap();
                drv::fill(lease.stream(), lease.plane(0).ptr, 4096, 0xee);
                assert_eq!(lease.commit(0).unwrap(), frames + 1);
                println!("COMMITTED {}", frames + 1);
                std::thread::sleep(Duration::from_secs(120));
            }
            // Keep the stream up until the subscriber is done.
            let deadline = Instant::now() + Duration::from_secs(60);
            while p.host().stats().active().count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "expect-error" => {
            let opts = CudaSubscriberOptions {
                ring: SubscriberOptions {
                    connect_timeout: Duration::from_secs(5),
                    ..Default::default()
                },
                device: None,
            };
            let e = CudaSubscriber::connect(key, &name, Mode::Queue, opts).unwrap_err();
            println!("ERROR {:?}: {e}", e.code());
        }
        r => panic!("unknown role {r}"),
    }
}
