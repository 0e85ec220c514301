//! GPU tests: run only with `CUFRAMES_GPU=1` on a machine with an NVIDIA
//! GPU (`CUFRAMES_GPU=1 cargo test -p cuframes-cuda --test gpu`).
//!
//! Publisher and subscribers are separate processes (this binary run again
//! with a role in `CUFRAMES_GPU_CHILD`), as CUDA IPC requires.

use cudarc::driver::sys;
use cuframes::{LosslessPolicy, Mode, PixelFormat, PublisherOptions, SubscriberOptions};
use cuframes_cuda::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "CUFRAMES_GPU_CHILD";
const W: u32 = 1280;
const H: u32 = 720;

fn enabled() -> bool {
    if std::env::var("CUFRAMES_GPU").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: set CUFRAMES_GPU=1 on a machine with an NVIDIA GPU");
    false
}

fn shm_dir() {
    let dir = std::env::temp_dir().join("cuframes-cuda-gpu");
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

fn spawn(role: &str, key: &str, frames: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["gpu_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{role},{key},{frames}"))
        .env("CUFRAMES_GPU", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn publisher(key: &str, export: ExportRequest, slots: u32) -> CudaPublisher {
    let opts = CudaPublisherOptions {
        ring: PublisherOptions {
            slot_count: slots,
            policy: LosslessPolicy::Block,
            block_timeout: Duration::from_secs(10),
            ..Default::default()
        },
        export,
        ..Default::default()
    };
    CudaPublisher::create(key, PixelFormat::Nv12, W, H, opts).unwrap()
}

fn wait_subscribers(p: &CudaPublisher, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.host().stats().active().count() < n {
        assert!(Instant::now() < deadline, "subscribers did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publisher writes a known pattern (host copies and in-place loans, both
/// on its stream); two subscriber processes check every byte on their own
/// streams, releasing each frame before their copy has run, so a publisher
/// that did not wait on release events would corrupt what they read.
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
        let frames = 300u64;
        let mut p = publisher(&key, export, 4);
        let kids = [spawn("verify", &key, frames), spawn("verify", &key, frames)];
        wait_subscribers(&p, 2);
        let len = p.layout().packed_bytes() as usize;
        for seq in 1..=frames {
            let data = pattern(seq, len);
            let got = if seq % 2 == 1 {
                p.publish_from_host(&data, seq as i64).unwrap()
            } else {
                let lease = p.loan().unwrap();
                assert_eq!(lease.plane(0).pitch % 512, 0);
                lease.copy_from_host(&data).unwrap();
                lease.commit(seq as i64).unwrap()
            };
            assert_eq!(got, seq);
        }
        for kid in kids {
            let out = kid.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains(&format!("VERIFIED {frames}")), "{text}");
        }
    }
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
        let len = p.layout().packed_bytes() as usize;
        p.publish_from_host(&pattern(1, len), 1).unwrap();
        let mut lines = BufReader::new(kid.stdout.take().unwrap()).lines();
        assert!(lines.any(|l| l.unwrap().contains("HOLDING")));
        assert_eq!(p.host().stats().active().map(|s| s.held).sum::<u32>(), 1);
        kid.kill().unwrap(); // SIGKILL
        kid.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.host().stats().active().count() > 0 {
            assert!(Instant::now() < deadline, "dead subscriber not swept");
            std::thread::sleep(Duration::from_millis(20));
        }
        for seq in 2..50 {
            p.publish_from_host(&pattern(seq, len), seq as i64).unwrap();
        }
        assert_eq!(p.host().stats().occupancy, 0);
    }
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
    let opts = CudaSubscriberOptions {
        ring: SubscriberOptions {
            connect_timeout: Duration::from_secs(20),
            ..Default::default()
        },
        device: None,
    };
    match role {
        "verify" => verify(key, frames, opts),
        "hold" => {
            let mut sub = CudaSubscriber::connect(key, "holder", Mode::NewestOnly, opts).unwrap();
            let f = sub.next_frame(Duration::from_secs(20)).unwrap();
            println!("HOLDING {}", f.seq());
            std::thread::sleep(Duration::from_secs(120));
        }
        r => panic!("unknown role {r}"),
    }
}

fn verify(key: &str, frames: u64, opts: CudaSubscriberOptions) {
    let name = format!("verify-{}", std::process::id());
    let mut sub = CudaSubscriber::connect(key, &name, Mode::Queue, opts).unwrap();
    let layout = *sub.layout();
    let len = layout.packed_bytes() as usize;
    let mut dev: sys::CUdevice = 0;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    let mut stream: sys::CUstream = std::ptr::null_mut();
    let mut host: *mut std::ffi::c_void = std::ptr::null_mut();
    let mut scratch: sys::CUdeviceptr = 0;
    let scratch_len = 256usize << 20;
    // SAFETY: plain driver calls with valid out-pointers; the primary
    // context is made current on this thread for the whole test.
    unsafe {
        ck("get", sys::cuDeviceGet(&mut dev, sub.device() as i32));
        ck("retain", sys::cuDevicePrimaryCtxRetain(&mut ctx, dev));
        ck("current", sys::cuCtxSetCurrent(ctx));
        ck("stream", sys::cuStreamCreate(&mut stream, 1));
        ck("host", sys::cuMemAllocHost_v2(&mut host, len));
        ck("scratch", sys::cuMemAlloc_v2(&mut scratch, scratch_len));
        sub.set_consumer_stream(stream);
    }
    let mut bases: HashMap<u32, u64> = HashMap::new();
    for want in 1..=frames {
        let f = sub.next_frame(Duration::from_secs(20)).unwrap();
        assert_eq!(f.seq(), want, "queue mode delivers every frame in order");
        assert_eq!(f.consumer_stream(), stream);
        let base = *bases.entry(f.slot()).or_insert(f.base_ptr());
        assert_eq!(f.base_ptr(), base, "a slot's device address never moves");
        assert_eq!(f.device_ptr(0), base);
        if want % 50 == 0 {
            // The convenience path agrees.
            assert_eq!(f.copy_to_host().unwrap(), pattern(want, len));
        }
        let mut dst = 0usize;
        // SAFETY: busy work on our scratch buffer delays the copy past the
        // release below; the copies read the frame's planes (inside the
        // imported allocation) into the pinned buffer of `len` bytes.
        unsafe {
            for _ in 0..4 {
                ck(
                    "busy",
                    sys::cuMemsetD8Async(scratch, 0, scratch_len, stream),
                );
            }
            for (i, p) in layout.planes().iter().enumerate() {
                let c = sys::CUDA_MEMCPY2D {
                    srcXInBytes: 0,
                    srcY: 0,
                    srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                    srcHost: std::ptr::null(),
                    srcDevice: f.device_ptr(i),
                    srcArray: std::ptr::null_mut(),
                    srcPitch: f.pitch(i) as usize,
                    dstXInBytes: 0,
                    dstY: 0,
                    dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_HOST,
                    dstHost: host.cast::<u8>().add(dst).cast(),
                    dstDevice: 0,
                    dstArray: std::ptr::null_mut(),
                    dstPitch: p.row_bytes as usize,
                    WidthInBytes: p.row_bytes as usize,
                    Height: p.rows as usize,
                };
                ck("copy", sys::cuMemcpy2DAsync_v2(&c, stream));
                dst += (p.row_bytes * p.rows) as usize;
            }
        }
        // Released while the copy is still queued: the release event keeps
        // the publisher off this slot until the copy is done.
        f.release();
        // SAFETY: waits for our stream; then reads the pinned buffer.
        let got = unsafe {
            ck("sync", sys::cuStreamSynchronize(stream));
            std::slice::from_raw_parts(host.cast::<u8>(), len)
        };
        assert!(got == pattern(want, len).as_slice(), "frame {want} differs");
    }
    println!("VERIFIED {frames}");
    drop(sub);
    // SAFETY: frees what we allocated above.
    unsafe {
        sys::cuMemFreeHost(host);
        sys::cuMemFree_v2(scratch);
        sys::cuStreamDestroy_v2(stream);
        sys::cuDevicePrimaryCtxRelease_v2(dev);
    }
}
