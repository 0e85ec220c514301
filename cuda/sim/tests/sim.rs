//! The simulator's rules, each checked in child processes of its own
//! (this binary run again with a scenario name in `CFSIM_TEST_ROLE`).

// `call!` runs driver entry points (unsafe by their FFI nature); every use
// is one entry point with arguments the test built.
#![allow(clippy::macro_metavars_in_unsafe)]

#[macro_use]
mod common;

use common::*;
use std::ffi::c_void;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The entry point of every child process.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "stale" => stale(),
        "deref" => deref(),
        "ipc_export" => ipc_export(),
        "ipc_import" => ipc_import(),
        "ipc_open_fails" => ipc_open_fails(),
        "pidns_export" => pidns_export(),
        "pidns_import" => pidns_import(),
        "event_rules" => event_rules(),
        "event_owner" => event_owner(),
        "event_user" => event_user(),
        "dead_waiter" => dead_waiter(),
        "dead_recorder" => dead_recorder(),
        "vmm" => vmm(),
        "vmm_import" => vmm_import(),
        "no_vmm" => no_vmm(),
        "wait_value" => wait_value(),
        "write_value" => write_value(),
        "no_context" => no_context(),
        "misuse" => misuse(),
        "legacy" => legacy(),
        "visible" => visible(),
        "copy2d" => copy2d(),
        "geq_sentinel" => geq_sentinel(),
        r => panic!("unknown role {r}"),
    }
}

// ---------------------------------------------------------------- async copies

/// A device-to-pinned copy is not there before the stream is synchronised
/// (stale data), and is after; pinned sources are read when the op runs,
/// pageable ones when it is enqueued; copies to pageable memory return
/// with the data.
#[test]
fn async_copy_is_stale_until_synchronised() {
    run("stale", &[("CUFRAMES_SIM_DELAY_US", "50000")]).passed_with(&[]);
}

fn stale() {
    init();
    let n = 1 << 16;
    let want = pattern(1, n);
    let d = alloc(n);
    htod(d, &want);
    let s = stream(1);
    let host = pinned(n);
    let scratch = alloc(4096);
    // A few ops ahead of the copy: each waits a random 0-50 ms first.
    let delay = || {
        for _ in 0..4 {
            ck!(cu::cuMemsetD8Async(scratch, 0, 4096, s));
        }
    };
    delay();
    ck!(cu::cuMemcpyDtoHAsync_v2(host.cast(), d, n, s));
    assert_eq!(query(s), CUresult::CUDA_ERROR_NOT_READY);
    assert!(
        peek(host) == 0 && peek(host.wrapping_add(n - 1)) == 0,
        "the copy landed before the stream was synchronised"
    );
    println!("STALE OBSERVED");
    ck!(cu::cuStreamSynchronize(s));
    assert_eq!(query(s), OK);
    // SAFETY: the stream is idle; the pinned buffer holds n bytes.
    let got = unsafe { std::slice::from_raw_parts(host, n) };
    assert!(got == want.as_slice(), "wrong data after synchronising");

    // A pinned source is read when the copy runs: a change made after the
    // call but before the sync is what arrives.
    let d2 = alloc(n);
    // SAFETY: n bytes of pinned memory, no op queued on them.
    unsafe { std::ptr::write_bytes(host, 7, n) };
    delay();
    ck!(cu::cuMemcpyHtoDAsync_v2(d2, host.cast(), n, s));
    // SAFETY: as above; the worker reads it later (that is the point).
    unsafe { std::ptr::write_volatile(host, 9) };
    ck!(cu::cuStreamSynchronize(s));
    assert_eq!(dtoh(d2, 1)[0], 9, "pinned source not read when the op ran");

    // A pageable source is staged at the call.
    let mut v = vec![7u8; n];
    delay();
    ck!(cu::cuMemcpyHtoDAsync_v2(d2, v.as_ptr().cast(), n, s));
    v.fill(9);
    ck!(cu::cuStreamSynchronize(s));
    assert!(
        dtoh(d2, n).iter().all(|b| *b == 7),
        "pageable source not staged"
    );

    // A copy to pageable memory is synchronous.
    let mut out = vec![0u8; n];
    delay();
    ck!(cu::cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), d, n, s));
    assert!(out == want, "copy to pageable memory returned early");
    assert_eq!(query(s), OK);
    println!("DONE");
}

/// 2D copies move exactly the rows asked for, with offsets and pitches, in
/// every direction and memory type.
#[test]
fn copy_2d_geometry() {
    run("copy2d", &[]).passed_with(&["pitch smaller than the row width"]);
}

fn copy2d_desc(
    src: (sys::CUmemorytype, usize, u64, usize),
    dst: (sys::CUmemorytype, usize, u64, usize),
    xy: (usize, usize, usize, usize),
    w: usize,
    h: usize,
) -> sys::CUDA_MEMCPY2D {
    sys::CUDA_MEMCPY2D {
        srcXInBytes: xy.0,
        srcY: xy.1,
        srcMemoryType: src.0,
        srcHost: src.1 as *const c_void,
        srcDevice: src.2,
        srcArray: std::ptr::null_mut(),
        srcPitch: src.3,
        dstXInBytes: xy.2,
        dstY: xy.3,
        dstMemoryType: dst.0,
        dstHost: dst.1 as *mut c_void,
        dstDevice: dst.2,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst.3,
        WidthInBytes: w,
        Height: h,
    }
}

fn copy2d() {
    use sys::CUmemorytype::*;
    init();
    let s = stream(1);
    let (w, h) = (64usize, 10usize);
    let src: Vec<u8> = (0..100 * 12).map(|i| (i % 253) as u8).collect();
    let d = alloc(128 * 12);
    ck!(cu::cuMemsetD8_v2(d, 0xEE, 128 * 12));
    // Pageable host (pitch 100, from column 3 row 1) -> device (pitch 128,
    // to column 5 row 2).
    let c = copy2d_desc(
        (CU_MEMORYTYPE_HOST, src.as_ptr() as usize, 0, 100),
        (CU_MEMORYTYPE_DEVICE, 0, d, 128),
        (3, 1, 5, 2),
        w,
        h,
    );
    ck!(cu::cuMemcpy2DAsync_v2(&c, s));
    // Device -> pinned (pitch 80), unified addressing for the source.
    let out = pinned(80 * h);
    let c = copy2d_desc(
        (CU_MEMORYTYPE_UNIFIED, 0, d + 2 * 128 + 5, 128),
        (CU_MEMORYTYPE_HOST, out as usize, 0, 80),
        (0, 0, 0, 0),
        w,
        h,
    );
    ck!(cu::cuMemcpy2DAsync_v2(&c, s));
    ck!(cu::cuStreamSynchronize(s));
    // SAFETY: the stream is idle; 80 * h bytes of pinned memory.
    let got = unsafe { std::slice::from_raw_parts(out, 80 * h) };
    for r in 0..h {
        let want = &src[(r + 1) * 100 + 3..(r + 1) * 100 + 3 + w];
        assert_eq!(&got[r * 80..r * 80 + w], want, "row {r}");
    }
    // Bytes around the rows are untouched on the device.
    let dev = dtoh(d, 128 * 12);
    assert_eq!(dev[2 * 128 + 4], 0xEE);
    assert_eq!(dev[2 * 128 + 5 + w], 0xEE);
    assert_eq!(dev[128 + 5], 0xEE);
    // Synchronous 2D device -> device.
    let d2 = alloc(64 * h);
    let c = copy2d_desc(
        (CU_MEMORYTYPE_DEVICE, 0, d + 2 * 128 + 5, 128),
        (CU_MEMORYTYPE_DEVICE, 0, d2, 64),
        (0, 0, 0, 0),
        w,
        h,
    );
    ck!(cu::cuMemcpy2D_v2(&c));
    assert_eq!(dtoh(d2, w), src[103..103 + w].to_vec());
    // A pitch below the width is refused.
    let c = copy2d_desc(
        (CU_MEMORYTYPE_DEVICE, 0, d, 32),
        (CU_MEMORYTYPE_DEVICE, 0, d2, 64),
        (0, 0, 0, 0),
        w,
        2,
    );
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemcpy2D_v2(&c));
    // 32-bit and 2D memsets.
    ck!(cu::cuMemsetD32Async(d2, 0x01020304, 4, s));
    ck!(cu::cuMemsetD2D8Async(d2 + 16, 64, 9, 8, 2, s));
    ck!(cu::cuStreamSynchronize(s));
    let v = dtoh(d2, 128);
    assert_eq!(&v[..4], &0x01020304u32.to_ne_bytes());
    assert_eq!(&v[16..24], &[9; 8]);
    assert_eq!(&v[80..88], &[9; 8]);
    assert_ne!(v[24], 9);
    println!("DONE");
}

/// Device pointers are not host pointers: dereferencing one faults.
#[test]
fn device_pointer_dereference_faults() {
    let o = run("deref", &[]);
    assert_eq!(o.status.signal(), Some(libc::SIGSEGV), "{}", o.show());
    assert!(o.stdout.contains("DEREF"), "{}", o.show());
}

fn deref() {
    init();
    let d = alloc(4096);
    let host = pinned(4096);
    let mut alias = 0u64;
    ck!(cu::cuMemHostGetDevicePointer_v2(&mut alias, host.cast(), 0));
    assert_ne!(
        alias, host as u64,
        "the device alias of pinned memory is a host pointer"
    );
    println!("DEREF {d:#x}");
    // SAFETY: deliberately not: the address is in the PROT_NONE device range.
    let v = unsafe { (d as *const u8).read_volatile() };
    println!("read {v} from device memory on the host");
}

// ---------------------------------------------------------------- legacy IPC

/// cuIpcGetMemHandle / cuIpcOpenMemHandle between two processes: the bytes
/// are shared; opening in the exporter (INVALID_CONTEXT), twice
/// (ALREADY_MAPPED) and closing twice are refused; freeing while an
/// importer has it open is reported; after the free, opening fails.
#[test]
fn legacy_ipc_across_processes() {
    run("ipc_export", &[]).passed_with(&[
        "opened in the process that exported it",
        "already open in this process",
        "not the base of an open IPC memory mapping",
        "exported memory freed while 1 importer(s) have it open",
    ]);
}

fn ipc_export() {
    init();
    let n = 1 << 20;
    let d = alloc(n);
    htod(d, &pattern(1, n));
    let h = ipc_mem_handle(d);
    let mut p = 0u64;
    fails!(
        CUDA_ERROR_INVALID_CONTEXT,
        cu::cuIpcOpenMemHandle_v2(&mut p, h, 1)
    );
    let hx = handle_hex(&h.reserved);
    let mut kid = spawn("ipc_import", &[("CFSIM_HANDLE", hx.clone())]);
    let mut out = lines(&mut kid);
    expect_line(&mut out, "HOLDING");
    assert!(
        dtoh(d, n) == pattern(2, n),
        "the importer's write is not seen"
    );
    // Freed while the importer holds it: done, and reported.
    ck!(cu::cuMemFree_v2(d));
    drop(kid.stdin.take());
    assert!(kid.wait().unwrap().success());
    finish(spawn("ipc_open_fails", &[("CFSIM_HANDLE", hx)]), "REFUSED");
    println!("DONE");
}

fn ipc_import() {
    init();
    let n = 1 << 20;
    let h = sys::CUipcMemHandle {
        reserved: handle_raw(&std::env::var("CFSIM_HANDLE").unwrap()),
    };
    let (mut p, mut q) = (0u64, 0u64);
    ck!(cu::cuIpcOpenMemHandle_v2(&mut p, h, 1));
    fails!(
        CUDA_ERROR_ALREADY_MAPPED,
        cu::cuIpcOpenMemHandle_v2(&mut q, h, 1)
    );
    assert!(
        dtoh(p, n) == pattern(1, n),
        "the exporter's bytes are not seen"
    );
    htod(p, &pattern(2, n));
    ck!(cu::cuIpcCloseMemHandle(p));
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuIpcCloseMemHandle(p));
    // Open again (allowed after a close) and hold it.
    ck!(cu::cuIpcOpenMemHandle_v2(&mut q, h, 1));
    println!("HOLDING");
    let _ = std::io::stdin().lines().count();
    ck!(cu::cuIpcCloseMemHandle(q));
}

fn ipc_open_fails() {
    init();
    let h = sys::CUipcMemHandle {
        reserved: handle_raw(&std::env::var("CFSIM_HANDLE").unwrap()),
    };
    let mut p = 0u64;
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuIpcOpenMemHandle_v2(&mut p, h, 1)
    );
    println!("REFUSED");
}

fn unshare_works() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork", "true"])
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Legacy IPC handles (memory and events) are refused in another pid
/// namespace, as by the real driver; no violation (callers may fall back).
#[test]
fn legacy_ipc_refused_across_pid_namespaces() {
    let o = run("pidns_export", &[]);
    o.passed_with(&[]);
    if let Some(l) = o.stdout.lines().find(|l| l.starts_with("SKIPPED")) {
        println!("{l}");
    }
}

fn pidns_export() {
    if let Err(e) = unshare_works() {
        println!("SKIPPED: unshare --user --pid is not permitted here: {e}");
        return;
    }
    init();
    let d = alloc(4096);
    let h = ipc_mem_handle(d);
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut ev, 6));
    let mut eh = sys::CUipcEventHandle { reserved: [0; 64] };
    ck!(cu::cuIpcGetEventHandle(&mut eh, ev));
    let args = child_args();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork"])
        .args(&args)
        .env(ROLE, "pidns_import")
        .env("CFSIM_HANDLE", handle_hex(&h.reserved))
        .env("CFSIM_EVHANDLE", handle_hex(&eh.reserved))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("PIDNS REFUSED"), "{text}");
    println!("DONE");
}

fn pidns_import() {
    init();
    let h = sys::CUipcMemHandle {
        reserved: handle_raw(&std::env::var("CFSIM_HANDLE").unwrap()),
    };
    let eh = sys::CUipcEventHandle {
        reserved: handle_raw(&std::env::var("CFSIM_EVHANDLE").unwrap()),
    };
    let mut p = 0u64;
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuIpcOpenMemHandle_v2(&mut p, h, 1)
    );
    let mut ev = std::ptr::null_mut();
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuIpcOpenEventHandle(&mut ev, eh)
    );
    println!("PIDNS REFUSED");
}

// ---------------------------------------------------------------- events

/// Event flags: INTERPROCESS needs DISABLE_TIMING; only such events have
/// IPC handles; no timing without timing; an own handle is not opened.
#[test]
fn event_flag_rules() {
    run("event_rules", &[]).passed_with(&[
        "CU_EVENT_INTERPROCESS requires CU_EVENT_DISABLE_TIMING",
        "event not created with CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING",
        "cuEventElapsedTime on an event created with CU_EVENT_DISABLE_TIMING",
        "IPC event handle opened in the process that exported it",
    ]);
}

fn event_rules() {
    init();
    let mut ev = std::ptr::null_mut();
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuEventCreate(&mut ev, 4));
    let mut plain = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut plain, 0));
    let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuIpcGetEventHandle(&mut h, plain)
    );
    let mut ipc = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut ipc, 6));
    ck!(cu::cuIpcGetEventHandle(&mut h, ipc));
    let mut own = std::ptr::null_mut();
    fails!(
        CUDA_ERROR_INVALID_CONTEXT,
        cu::cuIpcOpenEventHandle(&mut own, h)
    );
    // Never recorded: complete.
    ck!(cu::cuEventQuery(ipc));
    let s = stream(1);
    let mut end = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut end, 0));
    ck!(cu::cuEventRecord(plain, s));
    ck!(cu::cuEventRecord(ipc, s));
    ck!(cu::cuEventRecord(end, s));
    ck!(cu::cuEventSynchronize(end));
    ck!(cu::cuEventQuery(ipc));
    let mut ms = -1f32;
    ck!(cu::cuEventElapsedTime(&mut ms, plain, end));
    assert!(ms >= 0.0, "{ms}");
    fails!(
        CUDA_ERROR_INVALID_HANDLE,
        cu::cuEventElapsedTime(&mut ms, plain, ipc)
    );
    for e in [plain, ipc, end] {
        ck!(cu::cuEventDestroy_v2(e));
    }
    println!("DONE");
}

/// An IPC event used after its owner destroyed it: INVALID_HANDLE and a
/// violation for record, wait and query.
#[test]
fn ipc_event_after_owner_destroyed() {
    run("event_owner", &[]).passed_with(&[
        "cuEventQuery: IPC event",
        "cuEventRecord: IPC event",
        "cuStreamWaitEvent: IPC event",
    ]);
}

fn event_owner() {
    init();
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut ev, 6));
    let s = stream(1);
    ck!(cu::cuEventRecord(ev, s));
    let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
    ck!(cu::cuIpcGetEventHandle(&mut h, ev));
    let mut kid = spawn("event_user", &[("CFSIM_HANDLE", handle_hex(&h.reserved))]);
    let mut out = lines(&mut kid);
    expect_line(&mut out, "OPENED");
    ck!(cu::cuEventDestroy_v2(ev));
    writeln!(kid.stdin.take().unwrap(), "go").unwrap();
    expect_line(&mut out, "USED");
    assert!(kid.wait().unwrap().success());
    println!("DONE");
}

fn event_user() {
    init();
    let h = sys::CUipcEventHandle {
        reserved: handle_raw(&std::env::var("CFSIM_HANDLE").unwrap()),
    };
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuIpcOpenEventHandle(&mut ev, h));
    let s = stream(1);
    ck!(cu::cuStreamWaitEvent(s, ev, 0));
    ck!(cu::cuStreamSynchronize(s));
    println!("OPENED");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    fails!(CUDA_ERROR_INVALID_HANDLE, cu::cuEventQuery(ev));
    fails!(CUDA_ERROR_INVALID_HANDLE, cu::cuEventRecord(ev, s));
    fails!(CUDA_ERROR_INVALID_HANDLE, cu::cuStreamWaitEvent(s, ev, 0));
    // Our handle to it is still ours to destroy.
    ck!(cu::cuEventDestroy_v2(ev));
    println!("USED");
}

/// A stream waiting on a record made by a process that died before the
/// record completed never completes, and that is reported.
#[test]
fn wait_on_record_of_a_dead_process() {
    run("dead_waiter", &[]).passed_with(&["waits on event recorded by dead pid"]);
}

fn dead_waiter() {
    init();
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut ev, 6));
    let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
    ck!(cu::cuIpcGetEventHandle(&mut h, ev));
    let mut kid = spawn(
        "dead_recorder",
        &[("CFSIM_HANDLE", handle_hex(&h.reserved))],
    );
    let mut out = lines(&mut kid);
    expect_line(&mut out, "RECORDED");
    assert_eq!(call!(cu::cuEventQuery(ev)), CUresult::CUDA_ERROR_NOT_READY);
    kid.kill().unwrap();
    kid.wait().unwrap();
    let s = stream(1);
    ck!(cu::cuStreamWaitEvent(s, ev, 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !violations_now().contains("dead pid") {
        assert!(
            Instant::now() < deadline,
            "the dead recorder was not noticed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(query(s), CUresult::CUDA_ERROR_NOT_READY);
    println!("DONE");
    // The stream stays stuck; the process exits with it.
}

fn dead_recorder() {
    init();
    let h = sys::CUipcEventHandle {
        reserved: handle_raw(&std::env::var("CFSIM_HANDLE").unwrap()),
    };
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuIpcOpenEventHandle(&mut ev, h));
    let s = stream(1);
    let flag = alloc(4);
    ck!(cu::cuMemsetD8_v2(flag, 0, 4));
    // The record is queued behind a wait that nobody satisfies.
    ck!(cu::cuStreamWaitValue32_v2(s, flag, 1, 0));
    ck!(cu::cuEventRecord(ev, s));
    println!("RECORDED");
    std::thread::sleep(Duration::from_secs(60));
}

// ---------------------------------------------------------------- VMM

const GRAN: usize = 2 << 20;

fn prop() -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes:
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: 0,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

fn access(p: u64, size: usize, flags: sys::CUmemAccess_flags) {
    let d = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: 0,
        },
        flags,
    };
    ck!(cu::cuMemSetAccess(p, size, &d, 1));
}

fn reserve_map(h: u64, size: usize) -> u64 {
    let mut p = 0u64;
    ck!(cu::cuMemAddressReserve(&mut p, size, GRAN, 0, 0));
    ck!(cu::cuMemMap(p, size, 0, h, 0));
    p
}

const RW: sys::CUmemAccess_flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
const RO: sys::CUmemAccess_flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READ;
const POSIX_FD: u32 = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR.0;

/// VMM: create, export as a descriptor, import (here and in a child that
/// inherits the descriptor), map read-write and read-only; the rules on
/// sizes, access and unmapping.
#[test]
fn vmm_round_trip_and_rules() {
    run("vmm", &[]).passed_with(&[
        "cuMemCreate: size 1048576 is not a non-zero multiple",
        "cuMemcpyHtoD_v2: write to 0x",
        "not accessible from device 0",
        "cuMemsetD8_v2: write to 0x",
        "cuStreamWriteValue32_v2: write to 0x",
        "cuMemAddressFree: reservation",
        "cuMemRelease: 0x",
    ]);
}

fn vmm() {
    init();
    let mut g = 0usize;
    let pr = prop();
    ck!(cu::cuMemGetAllocationGranularity(
        &mut g,
        &pr,
        sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM as u32
    ));
    assert_eq!(g, GRAN);
    let mut h = 0u64;
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuMemCreate(&mut h, GRAN / 2, &pr, 0)
    );
    let size = 2 * GRAN;
    ck!(cu::cuMemCreate(&mut h, size, &pr, 0));
    let mut fd: std::ffi::c_int = -1;
    ck!(cu::cuMemExportToShareableHandle(
        (&mut fd as *mut std::ffi::c_int).cast(),
        h,
        POSIX_FD,
        0
    ));
    assert!(fd >= 0);
    let mut h2 = 0u64;
    ck!(cu::cuMemImportFromShareableHandle(
        &mut h2,
        fd as isize as *mut c_void,
        POSIX_FD
    ));
    let rw = reserve_map(h, size);
    let ro = reserve_map(h2, size);
    let want = pattern(3, size);
    // No access set yet: the range is not accessible.
    let fails_before = call!(cu::cuMemcpyHtoD_v2(rw, want.as_ptr().cast(), 64));
    assert_eq!(fails_before, CUresult::CUDA_ERROR_INVALID_VALUE);
    access(rw, size, RW);
    access(ro, size, RO);
    htod(rw, &want);
    assert!(dtoh(ro, size) == want, "the import does not see the bytes");
    fails!(
        CUDA_ERROR_ILLEGAL_ADDRESS,
        cu::cuMemcpyHtoD_v2(ro, want.as_ptr().cast(), 64)
    );
    fails!(CUDA_ERROR_ILLEGAL_ADDRESS, cu::cuMemsetD8_v2(ro, 0, 64));
    let s = stream(1);
    fails!(
        CUDA_ERROR_ILLEGAL_ADDRESS,
        cu::cuStreamWriteValue32_v2(s, ro, 1, 0)
    );
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemAddressFree(rw, size));
    let mut f = 0u64;
    let loc = sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: 0,
    };
    ck!(cu::cuMemGetAccess(&mut f, &loc, ro));
    assert_eq!(f, RO as u64);

    // Another process, descriptor inherited.
    // SAFETY: clears close-on-exec on our own descriptor so the child gets it.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let kid = spawn(
        "vmm_import",
        &[
            ("CFSIM_FD", fd.to_string()),
            ("CFSIM_SIZE", size.to_string()),
        ],
    );
    finish(kid, "VMM CHILD OK");
    // SAFETY: our descriptor from the export, closed once.
    unsafe { libc::close(fd) };
    // The child wrote the first byte through its own read-write mapping.
    assert_eq!(dtoh(rw, 1)[0], 0xAB);

    // Access may be changed.
    access(ro, size, RW);
    htod(ro, &[1, 2, 3]);
    for p in [rw, ro] {
        ck!(cu::cuMemUnmap(p, size));
        ck!(cu::cuMemAddressFree(p, size));
    }
    ck!(cu::cuMemRelease(h));
    ck!(cu::cuMemRelease(h2));
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemRelease(h2));
    println!("DONE");
}

fn vmm_import() {
    init();
    let fd: i32 = std::env::var("CFSIM_FD").unwrap().parse().unwrap();
    let size: usize = std::env::var("CFSIM_SIZE").unwrap().parse().unwrap();
    let mut h = 0u64;
    ck!(cu::cuMemImportFromShareableHandle(
        &mut h,
        fd as isize as *mut c_void,
        POSIX_FD
    ));
    let p = reserve_map(h, size);
    access(p, size, RW);
    assert!(
        dtoh(p, size) == pattern(3, size),
        "the child does not see the bytes"
    );
    htod(p, &[0xAB]);
    ck!(cu::cuMemUnmap(p, size));
    ck!(cu::cuMemAddressFree(p, size));
    ck!(cu::cuMemRelease(h));
    println!("VMM CHILD OK");
}

/// CUFRAMES_SIM_NO_VMM=1: the device says no, and cuMemCreate refuses.
#[test]
fn no_vmm_knob() {
    run("no_vmm", &[("CUFRAMES_SIM_NO_VMM", "1")]).passed_with(&[]);
}

fn no_vmm() {
    init();
    let mut v = -1;
    ck!(cu::cuDeviceGetAttribute(
        &mut v,
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED as u32,
        0
    ));
    assert_eq!(v, 0);
    let mut h = 0u64;
    fails!(
        CUDA_ERROR_NOT_SUPPORTED,
        cu::cuMemCreate(&mut h, GRAN, &prop(), 0)
    );
    println!("DONE");
}

// ---------------------------------------------------------------- stream memory ops

/// cuStreamWaitValue64 in one process is released by cuStreamWriteValue64
/// in another, through a shared file mapping registered in each; a
/// read-only registration refuses writes.
#[test]
fn stream_wait_value_across_processes() {
    run("wait_value", &[]).passed_with(&[
        "cuStreamWriteValue64_v2: write to 0x",
        "cuMemHostUnregister: 0x",
    ]);
}

fn map_file(path: &std::path::Path) -> (std::fs::File, *mut u8) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(4096).unwrap();
    // SAFETY: maps 4096 bytes of a file we hold open, shared.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    (f, p.cast())
}

fn register_alias(p: *mut u8, flags: u32) -> u64 {
    ck!(cu::cuMemHostRegister_v2(p.cast(), 4096, flags));
    let mut a = 0u64;
    ck!(cu::cuMemHostGetDevicePointer_v2(&mut a, p.cast(), 0));
    assert_ne!(a, p as u64);
    a
}

fn wait_value() {
    init();
    let path = sim_dir().join("flags.bin");
    let (_f, p) = map_file(&path);
    let alias = register_alias(p, 2);
    let s = stream(1);
    ck!(cu::cuStreamWaitValue64_v2(s, alias, 1, 0));
    ck!(cu::cuStreamWriteValue64_v2(s, alias + 8, 7, 0));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(query(s), CUresult::CUDA_ERROR_NOT_READY);
    assert_eq!(peek(p.wrapping_add(8)), 0);
    let kid = spawn(
        "write_value",
        &[("CFSIM_FILE", path.to_string_lossy().into_owned())],
    );
    finish(kid, "WROTE");
    ck!(cu::cuStreamSynchronize(s));
    assert_eq!(peek(p.wrapping_add(8)), 7);

    // The same range again: already registered (no violation).
    fails!(
        CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
        cu::cuMemHostRegister_v2(p.cast(), 4096, 2)
    );
    // A second, read-only mapping of the file: waits work, writes do not.
    let (_f2, p2) = map_file(&path);
    let ro = register_alias(p2, 2 | 8);
    ck!(cu::cuStreamWaitValue64_v2(s, ro, 1, 0));
    fails!(
        CUDA_ERROR_ILLEGAL_ADDRESS,
        cu::cuStreamWriteValue64_v2(s, ro, 2, 0)
    );
    ck!(cu::cuStreamSynchronize(s));
    ck!(cu::cuMemHostUnregister(p.cast()));
    ck!(cu::cuMemHostUnregister(p2.cast()));
    fails!(
        CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
        cu::cuMemHostUnregister(p2.cast())
    );
    println!("DONE");
}

fn write_value() {
    init();
    let (_f, p) = map_file(std::path::Path::new(&std::env::var("CFSIM_FILE").unwrap()));
    let alias = register_alias(p, 2);
    let s = stream(1);
    ck!(cu::cuStreamWriteValue64_v2(s, alias, 1, 0));
    ck!(cu::cuStreamSynchronize(s));
    ck!(cu::cuMemHostUnregister(p.cast()));
    println!("WROTE");
}

/// GEQ waits are cyclic: u64::MAX does not release a wait for 6 (it is
/// "behind" it), which is reported at once; the wait goes on until a value
/// that satisfies it arrives.
#[test]
fn geq_wait_is_cyclic() {
    run("geq_sentinel", &[]).passed_with(&["CU_STREAM_WAIT_VALUE_GEQ is a cyclic comparison"]);
}

fn geq_sentinel() {
    init();
    let d = alloc(8);
    htod(d, &u64::MAX.to_ne_bytes());
    let (s, rel) = (stream(1), stream(1));
    ck!(cu::cuStreamWaitValue64_v2(s, d, 6, 0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !violations_now().contains("cyclic") {
        assert!(
            Instant::now() < deadline,
            "the cyclic GEQ misuse was not reported"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(query(s), CUresult::CUDA_ERROR_NOT_READY);
    ck!(cu::cuStreamWriteValue64_v2(rel, d, 7, 0));
    ck!(cu::cuStreamSynchronize(s));
    println!("DONE");
}

// ---------------------------------------------------------------- contexts and misuse

/// Calls without a current context, before cuInit, on a destroyed
/// context.
#[test]
fn no_current_context() {
    run("no_context", &[]).passed_with(&[
        "cuInit: flags must be 0",
        "cuMemAlloc_v2: no current context",
        "cuStreamCreate: no current context",
        "cuCtxPopCurrent_v2: cuCtxPopCurrent with no context",
        "cuMemAlloc_v2: the current context (device 0) was destroyed",
        "cuCtxPushCurrent_v2: context 0x",
    ]);
}

fn no_context() {
    let mut n = 0;
    fails!(CUDA_ERROR_NOT_INITIALIZED, cu::cuDeviceGetCount(&mut n));
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuInit(1));
    ck!(cu::cuInit(0));
    ck!(cu::cuDeviceGetCount(&mut n));
    assert_eq!(n, 2);
    let mut d = 0u64;
    fails!(CUDA_ERROR_INVALID_CONTEXT, cu::cuMemAlloc_v2(&mut d, 64));
    let mut s = std::ptr::null_mut();
    fails!(CUDA_ERROR_INVALID_CONTEXT, cu::cuStreamCreate(&mut s, 0));
    let mut c = std::ptr::null_mut();
    fails!(CUDA_ERROR_INVALID_CONTEXT, cu::cuCtxPopCurrent_v2(&mut c));
    let ctx = ctx_of(0);
    let d = alloc(64);
    ck!(cu::cuMemFree_v2(d));
    // Released to refcount 0: the context is gone.
    ck!(cu::cuDevicePrimaryCtxRelease_v2(0));
    let mut d = 0u64;
    fails!(CUDA_ERROR_INVALID_CONTEXT, cu::cuMemAlloc_v2(&mut d, 64));
    ck!(cu::cuCtxPopCurrent_v2(&mut c));
    assert_eq!(c, ctx);
    fails!(CUDA_ERROR_INVALID_CONTEXT, cu::cuCtxPushCurrent_v2(ctx));
    println!("DONE");
}

/// Double frees and other misuse of handles and memory.
#[test]
fn double_free_and_misuse() {
    run("misuse", &[]).passed_with(&[
        "cuMemFree_v2: 0x",
        "not its base",
        "runs past the end of the allocation",
        "cuStreamDestroy_v2: 0x",
        "cuEventDestroy_v2: 0x",
        "memory of device 0 used on a stream/context of device 1",
        "cuMemAlloc_v2: size 0",
        "not a device address",
        "overlap",
    ]);
}

fn misuse() {
    init();
    let d = alloc(4096);
    ck!(cu::cuMemFree_v2(d));
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemFree_v2(d));
    let d = alloc(4096);
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemFree_v2(d + 16));
    let big = vec![0u8; 8192];
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuMemcpyHtoD_v2(d, big.as_ptr().cast(), big.len())
    );
    let s = stream(0);
    ck!(cu::cuStreamDestroy_v2(s));
    fails!(CUDA_ERROR_INVALID_HANDLE, cu::cuStreamDestroy_v2(s));
    let mut ev = std::ptr::null_mut();
    ck!(cu::cuEventCreate(&mut ev, 0));
    ck!(cu::cuEventDestroy_v2(ev));
    fails!(CUDA_ERROR_INVALID_HANDLE, cu::cuEventDestroy_v2(ev));
    // Memory of device 0 on a stream of device 1.
    ctx_of(1);
    let s1 = stream(0);
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuMemsetD8Async(d, 0, 4096, s1)
    );
    let mut c = std::ptr::null_mut();
    ck!(cu::cuCtxPopCurrent_v2(&mut c));
    let mut z = 0u64;
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemAlloc_v2(&mut z, 0));
    let host = [0u8; 64];
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuMemsetD8_v2(host.as_ptr() as u64, 0, 64)
    );
    fails!(CUDA_ERROR_INVALID_VALUE, cu::cuMemcpyDtoD_v2(d + 8, d, 64));
    // Pointer attributes: pageable memory is a plain failure.
    let mut t = 0u32;
    let mt = sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE as u32;
    fails!(
        CUDA_ERROR_INVALID_VALUE,
        cu::cuPointerGetAttribute((&mut t as *mut u32).cast(), mt, host.as_ptr() as u64)
    );
    ck!(cu::cuPointerGetAttribute(
        (&mut t as *mut u32).cast(),
        mt,
        d
    ));
    assert_eq!(t, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32);
    let pin = pinned(64);
    ck!(cu::cuPointerGetAttribute(
        (&mut t as *mut u32).cast(),
        mt,
        pin as u64
    ));
    assert_eq!(t, sys::CUmemorytype::CU_MEMORYTYPE_HOST as u32);
    // Error names.
    let mut name: *const std::ffi::c_char = std::ptr::null();
    ck!(cu::cuGetErrorName(
        CUresult::CUDA_ERROR_INVALID_VALUE as u32,
        &mut name
    ));
    // SAFETY: a static NUL-terminated string of the simulator.
    let text = unsafe { std::ffi::CStr::from_ptr(name) };
    assert_eq!(text.to_str().unwrap(), "CUDA_ERROR_INVALID_VALUE");
    ck!(cu::cuGetErrorString(
        CUresult::CUDA_SUCCESS as u32,
        &mut name
    ));
    // SAFETY: as above.
    let text = unsafe { std::ffi::CStr::from_ptr(name) };
    assert_eq!(text.to_str().unwrap(), "no error");
    println!("DONE");
}

/// The legacy default stream waits for earlier work on blocking streams,
/// later work on blocking streams waits for it, and non-blocking streams
/// are independent of it.
#[test]
fn legacy_default_stream_synchronisation() {
    run("legacy", &[]).passed_with(&[]);
}

fn legacy() {
    init();
    let null: sys::CUstream = std::ptr::null_mut();
    let n = 4096;
    let (x, z, f) = (alloc(n), alloc(n), alloc(64));
    ck!(cu::cuMemsetD8_v2(f, 0, 64));
    ck!(cu::cuMemsetD8_v2(x, 0, n));
    let nb = stream(1);
    let b = stream(0);
    let rel = stream(1);
    let eq = 1; // CU_STREAM_WAIT_VALUE_EQ

    // 1. The legacy stream does not wait for a non-blocking stream.
    ck!(cu::cuStreamWaitValue32_v2(nb, f, 1, eq));
    ck!(cu::cuMemsetD8Async(x, 2, n, nb));
    ck!(cu::cuMemcpyDtoDAsync_v2(z, x, n, null));
    ck!(cu::cuStreamSynchronize(null));
    assert_eq!(query(nb), CUresult::CUDA_ERROR_NOT_READY);
    ck!(cu::cuStreamWriteValue32_v2(rel, f, 1, 0));
    ck!(cu::cuStreamSynchronize(nb));

    // 2. The legacy stream waits for earlier work on a blocking stream.
    ck!(cu::cuStreamWaitValue32_v2(b, f + 4, 1, eq));
    ck!(cu::cuMemsetD8Async(x, 3, n, b));
    ck!(cu::cuMemcpyDtoDAsync_v2(z, x, n, null));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(query(null), CUresult::CUDA_ERROR_NOT_READY);
    ck!(cu::cuStreamWriteValue32_v2(rel, f + 4, 1, 0));
    ck!(cu::cuStreamSynchronize(null));
    assert!(dtoh(z, n).iter().all(|v| *v == 3), "legacy copy ran early");

    // 3. Later work on a blocking stream waits for earlier legacy work;
    // a non-blocking stream does not.
    ck!(cu::cuStreamWaitValue32_v2(null, f + 8, 1, eq));
    ck!(cu::cuMemsetD8Async(x, 4, n, b));
    ck!(cu::cuMemsetD8Async(z, 5, n, nb));
    ck!(cu::cuStreamSynchronize(nb));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(query(b), CUresult::CUDA_ERROR_NOT_READY);
    ck!(cu::cuStreamWriteValue32_v2(rel, f + 8, 1, 0));
    ck!(cu::cuStreamSynchronize(b));
    // The per-thread default stream is blocking too.
    let pt = 2 as sys::CUstream;
    ck!(cu::cuStreamWaitValue32_v2(null, f + 12, 1, eq));
    ck!(cu::cuMemsetD8Async(x, 6, n, pt));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(query(pt), CUresult::CUDA_ERROR_NOT_READY);
    ck!(cu::cuStreamWriteValue32_v2(rel, f + 12, 1, 0));
    ck!(cu::cuStreamSynchronize(pt));
    ck!(cu::cuCtxSynchronize());
    println!("DONE");
}

// ---------------------------------------------------------------- devices

/// CUDA_VISIBLE_DEVICES remaps ordinals; UUIDs follow the physical device;
/// an unknown entry ends the list; empty means no device.
#[test]
fn visible_devices_keep_uuids() {
    let all = run("visible", &[("CUFRAMES_SIM_DEVICES", "3")]);
    all.passed_with(&[]);
    let remapped = run(
        "visible",
        &[
            ("CUFRAMES_SIM_DEVICES", "3"),
            ("CUDA_VISIBLE_DEVICES", "2,0,7,1"),
        ],
    );
    remapped.passed_with(&[]);
    let none = run(
        "visible",
        &[("CUFRAMES_SIM_DEVICES", "3"), ("CUDA_VISIBLE_DEVICES", "")],
    );
    none.passed_with(&[]);
    let uuids = |o: &Outcome| -> Vec<String> {
        o.stdout
            .lines()
            .filter_map(|l| l.split_once("UUID ").map(|(_, u)| u.to_owned()))
            .collect()
    };
    let (a, r) = (uuids(&all), uuids(&remapped));
    assert_eq!(a.len(), 3, "{}", all.show());
    assert_eq!(r, vec![a[2].clone(), a[0].clone()], "{}", remapped.show());
    assert!(uuids(&none).is_empty(), "{}", none.show());
    assert!(
        all.stdout.contains("NAME cuframes-sim GPU 2"),
        "{}",
        all.show()
    );
}

fn visible() {
    ck!(cu::cuInit(0));
    let mut n = 0;
    ck!(cu::cuDeviceGetCount(&mut n));
    for i in 0..n {
        let mut dev = 0;
        ck!(cu::cuDeviceGet(&mut dev, i));
        let mut u = sys::CUuuid { bytes: [0; 16] };
        ck!(cu::cuDeviceGetUuid_v2(&mut u, dev));
        println!("UUID {}", hex(&u.bytes.map(|b| b as u8)));
        let mut name = [0 as std::ffi::c_char; 64];
        ck!(cu::cuDeviceGetName(name.as_mut_ptr(), 64, dev));
        // SAFETY: NUL-terminated by the call.
        let s = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        println!("NAME {}", s.to_string_lossy());
    }
    let mut dev = 0;
    fails!(CUDA_ERROR_INVALID_DEVICE, cu::cuDeviceGet(&mut dev, n));
    let mut v = 0;
    ck!(cu::cuDriverGetVersion(&mut v));
    assert_eq!(v, 12080);
}
