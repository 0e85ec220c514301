//! The exported entry points, by the names cudarc loads.

use crate::abi::{self, AccessDesc, AllocProp, Location, Memcpy2D};
use crate::errors;
use crate::event::{self, EvMem, Event, EV_DISABLE_TIMING, EV_INTERPROCESS};
use crate::mem::{
    self, Backing, Host, Keep, Kind, Mapping, Pinned, Region, Span, GRAN, HOST_DEVICEMAP,
    HOST_IOMEMORY, HOST_PORTABLE, HOST_READ_ONLY, KIND_LEGACY, KIND_VMM, PAGE, PROT_READ,
    PROT_READWRITE, SLOT,
};
use crate::state::{ctx_handle, sim, Config, Sim, VmmHandle, SIM, TOTAL_MEM};
use crate::stream::{Op, SetVal, Src, Stream};
use crate::sys::{
    self, CUcontext, CUdevice, CUdeviceptr, CUevent, CUipcEventHandle, CUipcMemHandle,
    CUmemGenericAllocationHandle, CUresult, CUstream, CUuuid,
};
use crate::util::{
    self, fail, pid, round_up, viol, Rng, SendPtr, ALREADY_MAPPED, ALREADY_REGISTERED,
    INVALID_CONTEXT, INVALID_DEVICE, INVALID_HANDLE, INVALID_VALUE, NOT_INITIALIZED, NOT_READY,
    NOT_REGISTERED, NOT_SUPPORTED, OUT_OF_MEMORY, R, SUCCESS,
};
use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ulonglong, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

macro_rules! entry {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[no_mangle]
        // SAFETY: a driver entry point: callers pass pointers as the CUDA
        // driver API documents them; the body checks what it can (null,
        // ranges, handles), reports the rest as violations, never unwinds.
        pub unsafe extern "C" fn $name($($a: $t),*) -> CUresult {
            crate::guard(stringify!($name), move || -> R { $body })
        }
    };
}

/// Writes an out-parameter (null: a violation).
fn put<T>(p: *mut T, v: T) -> R {
    if p.is_null() {
        return Err(viol(INVALID_VALUE, "null output pointer"));
    }
    // SAFETY: non-null; the caller passes a pointer valid for one write of
    // T (the driver API's contract).
    unsafe { p.write(v) };
    Ok(())
}

/// Reads an in-parameter struct (null: a violation).
fn get<T>(p: *const T) -> R<T> {
    if p.is_null() {
        return Err(viol(INVALID_VALUE, "null parameter pointer"));
    }
    // SAFETY: non-null; the caller passes a pointer to a valid T (the
    // driver API's contract). The mirrors have only integer and pointer
    // fields, so any bit pattern is a valid value.
    Ok(unsafe { p.read() })
}

fn no_sim_mem(e: std::io::Error) -> util::Fail {
    mem::oom(e)
}

// ---------------------------------------------------------------- init

entry! {
    fn cuInit(flags: c_uint) {
        if flags != 0 {
            return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
        }
        let mut g = SIM.lock();
        if let Some(s) = g.as_ref() {
            return if s.init_pid == pid() {
                Ok(())
            } else {
                Err(viol(NOT_INITIALIZED, "cuInit in a child forked after cuInit (the driver does not survive fork)"))
            };
        }
        let cfg = Config::from_env();
        let space = mem::Space::new().map_err(no_sim_mem)?;
        util::state_dir();
        eprintln!(
            "cuframes-sim: seed={} devices={} delay_us={}",
            cfg.seed, cfg.devices, cfg.delay_us
        );
        *g = Some(Sim::new(cfg, space));
        Ok(())
    }
}

entry! {
    /// Works before cuInit, as in the real driver.
    fn cuDriverGetVersion(version: *mut c_int) {
        put(version, 12080)
    }
}

entry! {
    fn cuGetErrorName(error: c_uint, pstr: *mut *const c_char) {
        match errors::lookup(error) {
            Some((name, _)) => put(pstr, name.as_ptr()),
            None => Err(fail(INVALID_VALUE)),
        }
    }
}

entry! {
    fn cuGetErrorString(error: c_uint, pstr: *mut *const c_char) {
        match errors::lookup(error) {
            Some((_, desc)) => put(pstr, desc.as_ptr()),
            None => Err(fail(INVALID_VALUE)),
        }
    }
}

// ---------------------------------------------------------------- devices

entry! {
    fn cuDeviceGetCount(count: *mut c_int) {
        sim(|s| put(count, s.cfg.visible.len() as c_int))
    }
}

entry! {
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) {
        sim(|s| {
            let d = s.dev(ordinal)?;
            put(device, d as CUdevice)
        })
    }
}

entry! {
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) {
        sim(|s| {
            let d = s.dev(dev)?;
            if name.is_null() || len <= 0 {
                return Err(viol(INVALID_VALUE, "null name buffer or length <= 0"));
            }
            let text = format!("cuframes-sim GPU {}", s.phys(d));
            let n = text.len().min(len as usize - 1);
            // SAFETY: the caller's buffer holds `len` bytes; we write n + 1 <= len.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), name.cast::<u8>(), n);
                name.add(n).write(0);
            }
            Ok(())
        })
    }
}

fn uuid(uuid: *mut CUuuid, dev: CUdevice) -> R {
    sim(|s| {
        let d = s.dev(dev)?;
        let mut b = [0u8; 16];
        let text = format!("cfsim-gpu-{}", s.phys(d));
        b[..text.len()].copy_from_slice(text.as_bytes());
        put(
            uuid,
            CUuuid {
                bytes: b.map(|x| x as c_char),
            },
        )
    })
}

entry! {
    fn cuDeviceGetUuid(out: *mut CUuuid, dev: CUdevice) {
        uuid(out, dev)
    }
}

entry! {
    fn cuDeviceGetUuid_v2(out: *mut CUuuid, dev: CUdevice) {
        uuid(out, dev)
    }
}

entry! {
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) {
        sim(|s| {
            s.dev(dev)?;
            put(bytes, TOTAL_MEM as usize)
        })
    }
}

entry! {
    fn cuDeviceGetAttribute(pi: *mut c_int, attrib: c_uint, dev: CUdevice) {
        use sys::CUdevice_attribute as A;
        sim(|s| {
            s.dev(dev)?;
            let vmm = c_int::from(!s.cfg.no_vmm);
            let one = [
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1,
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1,
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS,
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR_V1,
                A::CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR,
                A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING,
                A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
                A::CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED,
            ];
            let v = if one.iter().any(|a| *a as u32 == attrib) {
                1
            } else if attrib == A::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED as u32
                || attrib == A::CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED as u32
            {
                vmm
            } else if attrib == A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as u32 {
                9
            } else {
                // Everything else, CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
                // and COMPUTE_CAPABILITY_MINOR included.
                0
            };
            put(pi, v)
        })
    }
}

// ---------------------------------------------------------------- contexts

entry! {
    fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) {
        sim(|s| {
            let d = s.dev(dev)?;
            if pctx.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            let c = &mut s.ctxs[d];
            c.refs += 1;
            if c.refs == 1 {
                c.gen += 1;
            }
            put(pctx, ctx_handle(d) as CUcontext)
        })
    }
}

fn release(dev: CUdevice) -> R {
    sim(|s| {
        let d = s.dev(dev)?;
        let c = &mut s.ctxs[d];
        if c.refs == 0 {
            return Err(viol(
                INVALID_CONTEXT,
                format!("primary context of device {d} released more often than retained"),
            ));
        }
        c.refs -= 1;
        if c.refs == 0 {
            s.destroy_ctx(d);
        }
        Ok(())
    })
}

entry! {
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) {
        release(dev)
    }
}

entry! {
    fn cuDevicePrimaryCtxRelease(dev: CUdevice) {
        release(dev)
    }
}

entry! {
    fn cuDevicePrimaryCtxGetState(dev: CUdevice, flags: *mut c_uint, active: *mut c_int) {
        sim(|s| {
            let d = s.dev(dev)?;
            put(flags, 0)?;
            put(active, c_int::from(s.ctxs[d].refs > 0))
        })
    }
}

entry! {
    fn cuCtxPushCurrent_v2(ctx: CUcontext) {
        sim(|s| {
            let ord = s.live_ctx(ctx as u64)?;
            Sim::stack_push(ord);
            Ok(())
        })
    }
}

entry! {
    fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) {
        sim(|_| match Sim::stack_pop() {
            None => Err(viol(
                INVALID_CONTEXT,
                "cuCtxPopCurrent with no context on this thread's stack",
            )),
            Some(o) if !pctx.is_null() => put(pctx, ctx_handle(o) as CUcontext),
            Some(_) => Ok(()),
        })
    }
}

entry! {
    fn cuCtxSetCurrent(ctx: CUcontext) {
        sim(|s| {
            if ctx.is_null() {
                Sim::stack_pop();
                return Ok(());
            }
            let ord = s.live_ctx(ctx as u64)?;
            Sim::stack_pop();
            Sim::stack_push(ord);
            Ok(())
        })
    }
}

entry! {
    fn cuCtxGetCurrent(pctx: *mut CUcontext) {
        sim(|_| {
            let h = Sim::stack_top().map(ctx_handle).unwrap_or(0);
            put(pctx, h as CUcontext)
        })
    }
}

entry! {
    fn cuCtxGetDevice(device: *mut CUdevice) {
        sim(|s| {
            let c = s.current()?;
            put(device, c as CUdevice)
        })
    }
}

entry! {
    fn cuCtxSynchronize() {
        let all = sim(|s| {
            let c = s.current()?;
            Ok(s.ctx_streams(c))
        })?;
        for (st, n) in all {
            st.wait_for(n);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- device memory

entry! {
    fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) {
        sim(|s| {
            let c = s.current()?;
            if dptr.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            if bytesize == 0 {
                return Err(viol(INVALID_VALUE, "size 0"));
            }
            let size = bytesize as u64;
            if s.used[c].saturating_add(size) > TOTAL_MEM {
                return Err(fail(OUT_OF_MEMORY));
            }
            let phys = s.phys(c);
            let b = Backing::create(KIND_LEGACY, size, phys, 0).map_err(no_sim_mem)?;
            let addr = s.space.alloc(size, 256).ok_or_else(|| fail(OUT_OF_MEMORY))?;
            s.table.regions.insert(
                addr,
                Region {
                    len: size,
                    kind: Kind::Alloc { b: Arc::new(b), phys, ctx: c },
                },
            );
            s.used[c] += size;
            put(dptr, addr)
        })
    }
}

entry! {
    fn cuMemFree_v2(dptr: CUdeviceptr) {
        sim(|s| {
            if dptr == 0 {
                return Err(fail(INVALID_VALUE));
            }
            match s.table.find(dptr) {
                Some((start, r)) if start == dptr => match &r.kind {
                    Kind::Alloc { .. } => {}
                    Kind::Import { .. } => {
                        return Err(viol(INVALID_VALUE, format!("{dptr:#x} was opened with cuIpcOpenMemHandle: release it with cuIpcCloseMemHandle, not cuMemFree")))
                    }
                    Kind::Alias { .. } => {
                        return Err(viol(INVALID_VALUE, format!("{dptr:#x} is the device alias of page-locked host memory, not a cuMemAlloc allocation")))
                    }
                    Kind::Reserve { .. } => {
                        return Err(viol(INVALID_VALUE, format!("{dptr:#x} is a VMM reservation (cuMemUnmap/cuMemAddressFree), not a cuMemAlloc allocation")))
                    }
                },
                Some((start, _)) => {
                    return Err(viol(INVALID_VALUE, format!("{dptr:#x} is inside the allocation at {start:#x}, not its base")))
                }
                None => {
                    return Err(viol(INVALID_VALUE, format!("{dptr:#x} is not a live allocation (double free, or never allocated)")))
                }
            }
            let Some(Region { kind: Kind::Alloc { b, ctx, .. }, len }) = s.table.regions.remove(&dptr) else {
                unreachable!("checked above")
            };
            s.used[ctx] = s.used[ctx].saturating_sub(len);
            b.header().freed.store(1, Ordering::Release);
            let n = b.live_importers();
            if n > 0 {
                return Err(viol(SUCCESS, format!("exported memory freed while {n} importer(s) have it open ({dptr:#x}, {len} bytes)")));
            }
            Ok(())
        })
    }
}

entry! {
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
        sim(|s| {
            let c = s.current()?;
            put(free, TOTAL_MEM.saturating_sub(s.used[c]) as usize)?;
            put(total, TOTAL_MEM as usize)
        })
    }
}

// ---------------------------------------------------------------- host memory

entry! {
    fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) {
        sim(|s| {
            let c = s.current()?;
            if pp.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            if bytesize == 0 {
                return Err(viol(INVALID_VALUE, "size 0"));
            }
            let len = round_up(bytesize as u64, PAGE) as usize;
            // SAFETY: a fresh private anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(fail(OUT_OF_MEMORY));
            }
            s.table.pinned.insert(
                p as usize,
                Pinned {
                    len: bytesize,
                    flags: HOST_PORTABLE | HOST_DEVICEMAP,
                    alloc_host: true,
                    alias: None,
                    phys: s.phys(c),
                    token: Arc::new(()),
                },
            );
            put(pp, p)
        })
    }
}

fn unpin(s: &mut Sim, p: usize, alloc_host: bool, what: &str) -> R<Pinned> {
    match s.table.pinned.get(&p) {
        Some(r) if r.alloc_host == alloc_host => {}
        Some(_) if alloc_host => {
            return Err(viol(
                INVALID_VALUE,
                format!(
                    "{p:#x} was registered with cuMemHostRegister, not allocated by cuMemAllocHost"
                ),
            ))
        }
        Some(_) => {
            return Err(viol(
                NOT_REGISTERED,
                format!("{p:#x} was allocated by cuMemAllocHost, not registered"),
            ))
        }
        None if alloc_host => {
            return Err(viol(
                INVALID_VALUE,
                format!(
                    "{p:#x} is not the start of a live cuMemAllocHost allocation (double free?)"
                ),
            ))
        }
        None => {
            return Err(viol(
                NOT_REGISTERED,
                format!("{p:#x} is not the start of a registered host range"),
            ))
        }
    }
    let r = s.table.pinned.remove(&p).expect("checked above");
    if let Some(a) = r.alias {
        s.table.regions.remove(&a);
    }
    let users = Arc::strong_count(&r.token) - 1;
    if users > 0 {
        return Err(viol(
            SUCCESS,
            format!("{what} {p:#x} while {users} queued stream op(s) still use it"),
        ));
    }
    Ok(r)
}

entry! {
    fn cuMemFreeHost(p: *mut c_void) {
        sim(|s| match unpin(s, p as usize, true, "freed") {
            Ok(r) => {
                // SAFETY: our mapping from cuMemAllocHost; no queued op uses it.
                unsafe { libc::munmap(p, round_up(r.len as u64, PAGE) as usize) };
                Ok(())
            }
            // Still in use by queued ops: leaked rather than unmapped under them.
            Err(e) => Err(e),
        })
    }
}

entry! {
    fn cuMemHostRegister_v2(p: *mut c_void, bytesize: usize, flags: c_uint) {
        sim(|s| {
            let c = s.current()?;
            if p.is_null() || bytesize == 0 {
                return Err(viol(INVALID_VALUE, "null pointer or size 0"));
            }
            if flags & !(HOST_PORTABLE | HOST_DEVICEMAP | HOST_IOMEMORY | HOST_READ_ONLY) != 0 {
                return Err(viol(INVALID_VALUE, format!("unknown flags {flags:#x}")));
            }
            if flags & HOST_IOMEMORY != 0 {
                return Err(fail(NOT_SUPPORTED));
            }
            let a = p as usize;
            if s.space.contains(a as u64) {
                return Err(viol(INVALID_VALUE, format!("{a:#x} is a device address, not host memory")));
            }
            if s.table.pinned_overlap(a, bytesize) {
                return Err(fail(ALREADY_REGISTERED));
            }
            s.table.pinned.insert(
                a,
                Pinned {
                    len: bytesize,
                    flags,
                    alloc_host: false,
                    alias: None,
                    phys: s.phys(c),
                    token: Arc::new(()),
                },
            );
            Ok(())
        })
    }
}

entry! {
    fn cuMemHostUnregister(p: *mut c_void) {
        sim(|s| unpin(s, p as usize, false, "unregistered").map(drop))
    }
}

entry! {
    fn cuMemHostGetDevicePointer_v2(pdptr: *mut CUdeviceptr, p: *mut c_void, flags: c_uint) {
        sim(|s| {
            let c = s.current()?;
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            let a = p as usize;
            let Some((base, r)) = s.table.pinned_at(a, 1) else {
                return Err(viol(INVALID_VALUE, format!("{a:#x} is not page-locked host memory (cuMemHostRegister/cuMemAllocHost)")));
            };
            if !r.alloc_host && r.flags & HOST_DEVICEMAP == 0 {
                return Err(viol(INVALID_VALUE, format!("{a:#x} was registered without CU_MEMHOSTREGISTER_DEVICEMAP")));
            }
            let phys = s.phys(c);
            if r.flags & HOST_PORTABLE == 0 && r.phys != phys {
                return Err(viol(INVALID_VALUE, format!("{a:#x} was registered (not PORTABLE) in the context of device {}, the current context is device {phys}", r.phys)));
            }
            let alias = match r.alias {
                Some(x) => x,
                None => {
                    let (len, flags, owner, token) = (r.len, r.flags, r.phys, r.token.clone());
                    // Keeps the host pointer's offset within a slot, so the
                    // alias has the host memory's alignment.
                    let off = (base as u64) % SLOT;
                    let start = s
                        .space
                        .alloc(len as u64 + off, SLOT)
                        .ok_or_else(|| fail(OUT_OF_MEMORY))?;
                    let x = start + off;
                    s.table.regions.insert(
                        x,
                        Region {
                            len: len as u64,
                            kind: Kind::Alias { host: base, flags, phys: owner, token },
                        },
                    );
                    s.table.pinned.get_mut(&base).expect("found above").alias = Some(x);
                    x
                }
            };
            put(pdptr, alias + (a - base) as u64)
        })
    }
}

entry! {
    fn cuPointerGetAttribute(data: *mut c_void, attribute: c_uint, ptr: CUdeviceptr) {
        sim(|s| {
            if data.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            let (mtype, phys) = match s.table.find(ptr) {
                Some((start, r)) => match &r.kind {
                    Kind::Alloc { phys, .. } | Kind::Import { phys, .. } => (abi::MEMORYTYPE_DEVICE, *phys),
                    Kind::Alias { phys, .. } => (abi::MEMORYTYPE_HOST, *phys),
                    Kind::Reserve { maps } => {
                        let rel = ptr - start;
                        match maps.range(..=rel).next_back() {
                            Some((o, m)) if rel < o + m.size => (abi::MEMORYTYPE_DEVICE, m.backing.header().phys),
                            _ => return Err(fail(INVALID_VALUE)),
                        }
                    }
                },
                None => match s.table.pinned_at(ptr as usize, 1) {
                    Some((_, r)) => (abi::MEMORYTYPE_HOST, r.phys),
                    None => return Err(fail(INVALID_VALUE)),
                },
            };
            if attribute == abi::POINTER_MEMORY_TYPE {
                put(data.cast::<c_uint>(), mtype)
            } else if attribute == abi::POINTER_DEVICE_ORDINAL {
                let ord = s.ordinal_of(phys).map(|o| o as c_int).unwrap_or(-1);
                put(data.cast::<c_int>(), ord)
            } else {
                Err(fail(INVALID_VALUE))
            }
        })
    }
}

// ---------------------------------------------------------------- copies and sets

#[derive(Clone, Copy)]
enum End {
    Host(usize),
    Dev(u64),
    Unified(u64),
}

struct Copy2 {
    dst: End,
    dpitch: usize,
    src: End,
    spitch: usize,
    width: usize,
    height: usize,
}

fn extent(pitch: usize, width: usize, height: usize) -> R<usize> {
    pitch
        .checked_mul(height - 1)
        .and_then(|v| v.checked_add(width))
        .ok_or_else(|| viol(INVALID_VALUE, "copy extent overflows"))
}

fn snapshot(p: usize, pitch: usize, width: usize, height: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(width * height);
    for row in 0..height {
        // SAFETY: the caller passes host memory readable over the copy's
        // extent (the API contract); pageable memory is read at the call,
        // as the driver stages it.
        v.extend_from_slice(unsafe {
            std::slice::from_raw_parts((p + row * pitch) as *const u8, width)
        });
    }
    v
}

type Wait = Option<(Arc<Stream>, u64)>;

fn copy(s: &mut Sim, c: Copy2, stream: CUstream, sync: bool) -> R<Wait> {
    let st = s.op_stream(stream as u64)?;
    if c.width == 0 || c.height == 0 {
        return Ok(None);
    }
    if c.height > 1 && (c.spitch < c.width || c.dpitch < c.width) {
        return Err(viol(
            INVALID_VALUE,
            format!(
                "pitch smaller than the row width (srcPitch {}, dstPitch {}, WidthInBytes {})",
                c.spitch, c.dpitch, c.width
            ),
        ));
    }
    let sext = extent(c.spitch, c.width, c.height)?;
    let dext = extent(c.dpitch, c.width, c.height)?;
    let unify = |e: End| match e {
        End::Unified(a) if s.space.contains(a) => End::Dev(a),
        End::Unified(a) => End::Host(a as usize),
        o => o,
    };
    let (src_end, dst_end) = (unify(c.src), unify(c.dst));
    let mut spitch = c.spitch;
    let mut wait = sync;
    let src = match src_end {
        End::Dev(a) => Src::At(s.table.resolve(&s.space, a, sext as u64, st.phys, false)?),
        End::Host(p) => match s.table.host(&s.space, p, sext, false)? {
            Host::Pinned(sp) => Src::At(sp),
            Host::Pageable => {
                // The driver stages pageable memory and "may synchronize
                // with the stream" (API synchronization behavior): the
                // strict reading is that the call returns only once the
                // stream has run everything before it and the copy.
                wait = true;
                spitch = c.width;
                Src::Snap(snapshot(p, c.spitch, c.width, c.height))
            }
        },
        End::Unified(_) => unreachable!("unified resolved above"),
    };
    let dst = match dst_end {
        End::Dev(a) => s.table.resolve(&s.space, a, dext as u64, st.phys, true)?,
        End::Host(p) => match s.table.host(&s.space, p, dext, true)? {
            Host::Pinned(sp) => sp,
            Host::Pageable => {
                // Copies to pageable memory are synchronous.
                wait = true;
                Span {
                    ptr: SendPtr(p as *mut u8),
                    keep: Keep::Caller,
                }
            }
        },
        End::Unified(_) => unreachable!("unified resolved above"),
    };
    if let Src::At(sp) = &src {
        let (a, b) = (sp.ptr.0 as usize, dst.ptr.0 as usize);
        if a < b + dext && b < a + sext {
            return Err(viol(
                INVALID_VALUE,
                "source and destination of the copy overlap (undefined)",
            ));
        }
    }
    let n = s.enqueue(
        &st,
        Op::Copy {
            src,
            dst,
            spitch,
            dpitch: c.dpitch,
            width: c.width,
            height: c.height,
        },
    );
    Ok(wait.then_some((st, n)))
}

fn run_copy(c: Copy2, stream: CUstream, sync: bool) -> R {
    if let Some((st, n)) = sim(|s| copy(s, c, stream, sync))? {
        st.wait_for(n);
    }
    Ok(())
}

fn end_of(
    kind: u32,
    host: usize,
    dev: u64,
    x: usize,
    y: usize,
    pitch: usize,
    which: &str,
) -> R<End> {
    let off = y
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(x))
        .ok_or_else(|| viol(INVALID_VALUE, "offset overflows"))?;
    match kind {
        abi::MEMORYTYPE_HOST => Ok(End::Host(host.wrapping_add(off))),
        abi::MEMORYTYPE_DEVICE => Ok(End::Dev(dev.wrapping_add(off as u64))),
        abi::MEMORYTYPE_UNIFIED => Ok(End::Unified(dev.wrapping_add(off as u64))),
        abi::MEMORYTYPE_ARRAY => {
            eprintln!("cuframes-sim: CUDA arrays are not simulated ({which})");
            Err(fail(NOT_SUPPORTED))
        }
        k => Err(viol(
            INVALID_VALUE,
            format!("unknown {which} memory type {k}"),
        )),
    }
}

fn copy2d(p: *const sys::CUDA_MEMCPY2D, stream: CUstream, sync: bool) -> R {
    let m: Memcpy2D = get(p.cast::<Memcpy2D>())?;
    let src = end_of(
        m.src_type,
        m.src_host as usize,
        m.src_device,
        m.src_x,
        m.src_y,
        m.src_pitch,
        "source",
    )?;
    let dst = end_of(
        m.dst_type,
        m.dst_host as usize,
        m.dst_device,
        m.dst_x,
        m.dst_y,
        m.dst_pitch,
        "destination",
    )?;
    run_copy(
        Copy2 {
            dst,
            dpitch: m.dst_pitch,
            src,
            spitch: m.src_pitch,
            width: m.width,
            height: m.height,
        },
        stream,
        sync,
    )
}

fn copy1(dst: End, src: End, n: usize, stream: CUstream, sync: bool) -> R {
    run_copy(
        Copy2 {
            dst,
            dpitch: n,
            src,
            spitch: n,
            width: n,
            height: 1,
        },
        stream,
        sync,
    )
}

const LEGACY: CUstream = std::ptr::null_mut();

entry! {
    fn cuMemcpy2DAsync_v2(p: *const sys::CUDA_MEMCPY2D, stream: CUstream) {
        copy2d(p, stream, false)
    }
}

entry! {
    fn cuMemcpy2D_v2(p: *const sys::CUDA_MEMCPY2D) {
        copy2d(p, LEGACY, true)
    }
}

entry! {
    fn cuMemcpy2DUnaligned_v2(p: *const sys::CUDA_MEMCPY2D) {
        copy2d(p, LEGACY, true)
    }
}

entry! {
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, n: usize, stream: CUstream) {
        copy1(End::Dev(dst), End::Host(src as usize), n, stream, false)
    }
}

entry! {
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, n: usize, stream: CUstream) {
        copy1(End::Host(dst as usize), End::Dev(src), n, stream, false)
    }
}

entry! {
    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize, stream: CUstream) {
        copy1(End::Dev(dst), End::Dev(src), n, stream, false)
    }
}

entry! {
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, n: usize) {
        copy1(End::Dev(dst), End::Host(src as usize), n, LEGACY, true)
    }
}

entry! {
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) {
        copy1(End::Host(dst as usize), End::Dev(src), n, LEGACY, true)
    }
}

entry! {
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy1(End::Dev(dst), End::Dev(src), n, LEGACY, true)
    }
}

entry! {
    fn cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, n: usize, stream: CUstream) {
        copy1(End::Unified(dst), End::Unified(src), n, stream, false)
    }
}

entry! {
    fn cuMemcpy(dst: CUdeviceptr, src: CUdeviceptr, n: usize) {
        copy1(End::Unified(dst), End::Unified(src), n, LEGACY, true)
    }
}

fn memset(
    dst: CUdeviceptr,
    pitch: usize,
    width: usize,
    height: usize,
    val: SetVal,
    stream: CUstream,
    sync: bool,
) -> R {
    let w = sim(|s| {
        let st = s.op_stream(stream as u64)?;
        if width == 0 || height == 0 {
            return Ok(None);
        }
        let esz = match val {
            SetVal::U8(_) => 1,
            SetVal::U32(_) => 4,
        };
        if dst % esz as u64 != 0 {
            return Err(viol(
                INVALID_VALUE,
                format!("{dst:#x} is not {esz}-byte aligned"),
            ));
        }
        let wb = width
            .checked_mul(esz)
            .ok_or_else(|| viol(INVALID_VALUE, "size overflows"))?;
        if height > 1 && pitch < wb {
            return Err(viol(
                INVALID_VALUE,
                format!("pitch {pitch} smaller than the row width {wb}"),
            ));
        }
        let ext = extent(pitch, wb, height)?;
        let span = s.table.resolve(&s.space, dst, ext as u64, st.phys, true)?;
        let n = s.enqueue(
            &st,
            Op::Set {
                dst: span,
                pitch,
                width,
                height,
                val,
            },
        );
        Ok(sync.then_some((st, n)))
    })?;
    if let Some((st, n)) = w {
        st.wait_for(n);
    }
    Ok(())
}

entry! {
    fn cuMemsetD8Async(dst: CUdeviceptr, uc: c_uchar, n: usize, stream: CUstream) {
        memset(dst, n, n, 1, SetVal::U8(uc), stream, false)
    }
}

entry! {
    fn cuMemsetD8_v2(dst: CUdeviceptr, uc: c_uchar, n: usize) {
        memset(dst, n, n, 1, SetVal::U8(uc), LEGACY, true)
    }
}

entry! {
    fn cuMemsetD32Async(dst: CUdeviceptr, ui: c_uint, n: usize, stream: CUstream) {
        memset(dst, n.saturating_mul(4), n, 1, SetVal::U32(ui), stream, false)
    }
}

entry! {
    fn cuMemsetD32_v2(dst: CUdeviceptr, ui: c_uint, n: usize) {
        memset(dst, n.saturating_mul(4), n, 1, SetVal::U32(ui), LEGACY, true)
    }
}

entry! {
    fn cuMemsetD2D8Async(dst: CUdeviceptr, pitch: usize, uc: c_uchar, width: usize, height: usize, stream: CUstream) {
        memset(dst, pitch, width, height, SetVal::U8(uc), stream, false)
    }
}

// ---------------------------------------------------------------- streams

fn create_stream(ph: *mut CUstream, flags: c_uint) -> R {
    sim(|s| {
        let c = s.current()?;
        if ph.is_null() {
            return Err(viol(INVALID_VALUE, "null output pointer"));
        }
        if flags > 1 {
            return Err(viol(
                INVALID_VALUE,
                format!("unknown stream flags {flags:#x}"),
            ));
        }
        let st = s.user_stream(c, flags);
        put(ph, st.handle as CUstream)
    })
}

entry! {
    fn cuStreamCreate(ph: *mut CUstream, flags: c_uint) {
        create_stream(ph, flags)
    }
}

entry! {
    fn cuStreamCreateWithPriority(ph: *mut CUstream, flags: c_uint, _priority: c_int) {
        create_stream(ph, flags)
    }
}

entry! {
    fn cuStreamDestroy_v2(h: CUstream) {
        sim(|s| {
            let v = h as u64;
            if v <= 2 {
                return Err(viol(INVALID_HANDLE, format!("{v:#x} is a default stream, which cannot be destroyed")));
            }
            match s.streams.remove(&v) {
                Some(st) => {
                    st.close();
                    Ok(())
                }
                None => Err(viol(INVALID_HANDLE, format!("{v:#x} is not a live stream (destroyed twice, or never created)"))),
            }
        })
    }
}

entry! {
    fn cuStreamSynchronize(h: CUstream) {
        let (st, n) = sim(|s| {
            let st = s.any_stream(h as u64)?;
            let n = st.enqueued();
            Ok((st, n))
        })?;
        st.wait_for(n);
        Ok(())
    }
}

entry! {
    fn cuStreamQuery(h: CUstream) {
        sim(|s| {
            if s.any_stream(h as u64)?.idle() {
                Ok(())
            } else {
                Err(fail(NOT_READY))
            }
        })
    }
}

entry! {
    fn cuStreamGetCtx(h: CUstream, pctx: *mut CUcontext) {
        sim(|s| {
            let st = s.any_stream(h as u64)?;
            put(pctx, ctx_handle(st.ctx) as CUcontext)
        })
    }
}

entry! {
    fn cuStreamGetFlags(h: CUstream, flags: *mut c_uint) {
        sim(|s| {
            let st = s.any_stream(h as u64)?;
            put(flags, st.flags)
        })
    }
}

fn ev(s: &Sim, h: CUevent) -> R<&Event> {
    let v = h as u64;
    let e = s.events.get(&v).ok_or_else(|| {
        viol(
            INVALID_HANDLE,
            format!("{v:#x} is not a live event (destroyed, or never created)"),
        )
    })?;
    let b = e.mem.block();
    if e.imported && b.destroyed.load(Ordering::Acquire) != 0 {
        return Err(viol(
            INVALID_HANDLE,
            format!(
                "IPC event {v:#x} used after its owner (pid {}) destroyed it",
                b.owner_pid
            ),
        ));
    }
    Ok(e)
}

entry! {
    fn cuStreamWaitEvent(h: CUstream, event: CUevent, flags: c_uint) {
        sim(|s| {
            let st = s.op_stream(h as u64)?;
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            let mem = ev(s, event)?.mem.clone();
            let n = mem.block().recorded.load(Ordering::Acquire);
            if n > 0 && !mem.done(n) {
                s.enqueue(&st, Op::WaitEvent { ev: mem, n });
            }
            Ok(())
        })
    }
}

fn write_value(h: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint, wide: bool) -> R {
    sim(|s| {
        let st = s.op_stream(h as u64)?;
        if flags & !1 != 0 {
            return Err(viol(INVALID_VALUE, format!("unknown flags {flags:#x}")));
        }
        let size = if wide { 8 } else { 4 };
        if addr % size != 0 {
            return Err(viol(
                INVALID_VALUE,
                format!("{addr:#x} is not {size}-byte aligned"),
            ));
        }
        let at = s.table.resolve(&s.space, addr, size, st.phys, true)?;
        if at.ptr.0 as u64 % size != 0 {
            return Err(viol(
                INVALID_VALUE,
                format!("{addr:#x} maps to host memory that is not {size}-byte aligned"),
            ));
        }
        s.enqueue(&st, Op::WriteValue { at, value, wide });
        Ok(())
    })
}

fn wait_value(h: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint, wide: bool) -> R {
    sim(|s| {
        let st = s.op_stream(h as u64)?;
        let cond = flags & !abi::WAIT_FLUSH;
        if cond > 3 {
            return Err(viol(INVALID_VALUE, format!("unknown flags {flags:#x}")));
        }
        let size = if wide { 8 } else { 4 };
        if addr % size != 0 {
            return Err(viol(
                INVALID_VALUE,
                format!("{addr:#x} is not {size}-byte aligned"),
            ));
        }
        let at = s.table.resolve(&s.space, addr, size, st.phys, false)?;
        if at.ptr.0 as u64 % size != 0 {
            return Err(viol(
                INVALID_VALUE,
                format!("{addr:#x} maps to host memory that is not {size}-byte aligned"),
            ));
        }
        s.enqueue(
            &st,
            Op::WaitValue {
                at,
                value,
                wide,
                cond,
            },
        );
        Ok(())
    })
}

entry! {
    fn cuStreamWriteValue64_v2(h: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint) {
        write_value(h, addr, value, flags, true)
    }
}

entry! {
    fn cuStreamWriteValue32_v2(h: CUstream, addr: CUdeviceptr, value: c_uint, flags: c_uint) {
        write_value(h, addr, u64::from(value), flags, false)
    }
}

entry! {
    fn cuStreamWaitValue64_v2(h: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint) {
        wait_value(h, addr, value, flags, true)
    }
}

entry! {
    fn cuStreamWaitValue32_v2(h: CUstream, addr: CUdeviceptr, value: c_uint, flags: c_uint) {
        wait_value(h, addr, u64::from(value), flags, false)
    }
}

// ---------------------------------------------------------------- events

entry! {
    fn cuEventCreate(ph: *mut CUevent, flags: c_uint) {
        sim(|s| {
            let c = s.current()?;
            if ph.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            if flags & !7 != 0 {
                return Err(viol(INVALID_VALUE, format!("unknown event flags {flags:#x}")));
            }
            if flags & EV_INTERPROCESS != 0 && flags & EV_DISABLE_TIMING == 0 {
                return Err(viol(INVALID_VALUE, "CU_EVENT_INTERPROCESS requires CU_EVENT_DISABLE_TIMING"));
            }
            let mem = EvMem::new(flags, flags & EV_INTERPROCESS != 0).map_err(no_sim_mem)?;
            let id = s.id();
            let h = Sim::event_handle(id);
            s.events.insert(
                h,
                Event { ctx: c, flags, mem: Arc::new(mem), imported: false },
            );
            put(ph, h as CUevent)
        })
    }
}

entry! {
    fn cuEventDestroy_v2(event: CUevent) {
        sim(|s| {
            let v = event as u64;
            match s.events.remove(&v) {
                Some(e) => {
                    if !e.imported && e.flags & EV_INTERPROCESS != 0 {
                        e.mem.block().destroyed.store(1, Ordering::Release);
                    }
                    Ok(())
                }
                None => Err(viol(INVALID_HANDLE, format!("{v:#x} is not a live event (destroyed twice, or never created)"))),
            }
        })
    }
}

fn record(event: CUevent, h: CUstream) -> R {
    sim(|s| {
        let st = s.op_stream(h as u64)?;
        let e = ev(s, event)?;
        if e.ctx != st.ctx {
            return Err(viol(
                INVALID_HANDLE,
                format!(
                    "event of the context of device {} recorded on a stream of device {}",
                    e.ctx, st.ctx
                ),
            ));
        }
        let mem = e.mem.clone();
        let b = mem.block();
        b.recorder_pid.store(pid(), Ordering::Release);
        b.recorder_start
            .store(util::my_start_time(), Ordering::Release);
        let n = b.recorded.fetch_add(1, Ordering::AcqRel) + 1;
        s.enqueue(&st, Op::Record { ev: mem, n });
        Ok(())
    })
}

entry! {
    fn cuEventRecord(event: CUevent, h: CUstream) {
        record(event, h)
    }
}

entry! {
    fn cuEventRecordWithFlags(event: CUevent, h: CUstream, flags: c_uint) {
        if flags != 0 {
            return Err(viol(INVALID_VALUE, format!("flags {flags:#x}: only CU_EVENT_RECORD_DEFAULT is simulated (EXTERNAL is for graph capture)")));
        }
        record(event, h)
    }
}

entry! {
    fn cuEventQuery(event: CUevent) {
        sim(|s| {
            let e = ev(s, event)?;
            if e.mem.done(e.mem.block().recorded.load(Ordering::Acquire)) {
                Ok(())
            } else {
                Err(fail(NOT_READY))
            }
        })
    }
}

entry! {
    fn cuEventSynchronize(event: CUevent) {
        let (mem, n) = sim(|s| {
            let e = ev(s, event)?;
            Ok((e.mem.clone(), e.mem.block().recorded.load(Ordering::Acquire)))
        })?;
        let mut rng = Rng::new(util::random_u64());
        event::wait_event(&mem, n, &mut rng, "cuEventSynchronize");
        Ok(())
    }
}

fn elapsed(ms: *mut f32, a: CUevent, b: CUevent) -> R {
    sim(|s| {
        let (ea, eb) = (ev(s, a)?, ev(s, b)?);
        if (ea.flags | eb.flags) & EV_DISABLE_TIMING != 0 {
            return Err(viol(
                INVALID_HANDLE,
                "cuEventElapsedTime on an event created with CU_EVENT_DISABLE_TIMING",
            ));
        }
        let (ba, bb) = (ea.mem.block(), eb.mem.block());
        let (ra, rb) = (
            ba.recorded.load(Ordering::Acquire),
            bb.recorded.load(Ordering::Acquire),
        );
        if ra == 0 || rb == 0 {
            return Err(viol(
                INVALID_HANDLE,
                "cuEventElapsedTime on an event that was never recorded",
            ));
        }
        if !ea.mem.done(ra) || !eb.mem.done(rb) {
            return Err(fail(NOT_READY));
        }
        let d =
            bb.done_ns.load(Ordering::Acquire) as f64 - ba.done_ns.load(Ordering::Acquire) as f64;
        put(ms, (d / 1e6) as f32)
    })
}

entry! {
    fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent) {
        elapsed(ms, start, end)
    }
}

entry! {
    fn cuEventElapsedTime_v2(ms: *mut f32, start: CUevent, end: CUevent) {
        elapsed(ms, start, end)
    }
}

// ---------------------------------------------------------------- legacy IPC

const MAGIC_IPC_MEM: &[u8; 8] = b"CFSIMIPC";
const MAGIC_IPC_EVENT: &[u8; 8] = b"CFSIMEVT";

/// The fields of the sim's 64-byte IPC handles.
struct IpcHandle {
    pid: u32,
    fd: i32,
    pidns: u64,
    id: u64,
    size: u64,
    phys: u32,
}

impl IpcHandle {
    fn encode(&self, magic: &[u8; 8]) -> [c_char; 64] {
        let mut b = [0u8; 64];
        b[..8].copy_from_slice(magic);
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.fd.to_le_bytes());
        b[16..24].copy_from_slice(&self.pidns.to_le_bytes());
        b[24..32].copy_from_slice(&self.id.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b[40..44].copy_from_slice(&self.phys.to_le_bytes());
        b.map(|x| x as c_char)
    }

    fn decode(raw: &[c_char; 64], magic: &[u8; 8]) -> Option<IpcHandle> {
        let b = raw.map(|x| x as u8);
        if &b[..8] != magic {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(IpcHandle {
            pid: u32_at(8),
            fd: u32_at(12) as i32,
            pidns: u64_at(16),
            id: u64_at(24),
            size: u64_at(32),
            phys: u32_at(40),
        })
    }
}

/// Opens another process's descriptor through /proc.
fn open_proc_fd(pid: u32, fd: i32) -> Option<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(OwnedFd::from)
}

entry! {
    fn cuIpcGetMemHandle(handle: *mut CUipcMemHandle, dptr: CUdeviceptr) {
        sim(|s| {
            let b = match s.table.find(dptr) {
                Some((start, Region { kind: Kind::Alloc { b, .. }, .. })) if start == dptr => b.clone(),
                _ => {
                    return Err(viol(INVALID_VALUE, format!("{dptr:#x} is not the base of a live cuMemAlloc allocation")))
                }
            };
            let h = b.header();
            let raw = IpcHandle {
                pid: pid(),
                fd: b.fd(),
                pidns: s.pidns,
                id: h.id,
                size: h.size,
                phys: h.phys,
            }
            .encode(MAGIC_IPC_MEM);
            put(handle, CUipcMemHandle { reserved: raw })
        })
    }
}

entry! {
    fn cuIpcOpenMemHandle_v2(pdptr: *mut CUdeviceptr, handle: CUipcMemHandle, flags: c_uint) {
        sim(|s| {
            let cur = s.current()?;
            if pdptr.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            if flags & !1 != 0 {
                return Err(viol(INVALID_VALUE, format!("unknown flags {flags:#x}")));
            }
            let Some(h) = IpcHandle::decode(&handle.reserved, MAGIC_IPC_MEM) else {
                return Err(viol(INVALID_VALUE, "not an IPC memory handle made by cuIpcGetMemHandle"));
            };
            if h.pidns != s.pidns {
                // The real driver refuses legacy IPC across pid namespaces.
                return Err(fail(INVALID_VALUE));
            }
            if h.pid == pid() {
                return Err(viol(INVALID_CONTEXT, "IPC memory handle opened in the process that exported it"));
            }
            let open = s.table.regions.iter().find(|(_, r)| {
                matches!(&r.kind, Kind::Import { b, .. } if b.header().id == h.id)
            });
            if let Some((a, _)) = open {
                return Err(viol(ALREADY_MAPPED, format!("IPC memory handle already open in this process at {a:#x} (close it first)")));
            }
            let Some(ord) = s.ordinal_of(h.phys) else {
                return Err(fail(INVALID_DEVICE));
            };
            if ord != cur {
                return Err(viol(INVALID_DEVICE, format!("memory of device {ord} opened while the context of device {cur} is current")));
            }
            let Some(fd) = open_proc_fd(h.pid, h.fd) else {
                return Err(fail(INVALID_VALUE));
            };
            let Some(b) = Backing::open(fd, KIND_LEGACY) else {
                return Err(fail(INVALID_VALUE));
            };
            let hd = b.header();
            if hd.id != h.id || hd.size != h.size || hd.freed.load(Ordering::Acquire) != 0 {
                return Err(fail(INVALID_VALUE));
            }
            let slot = b.add_importer().ok_or_else(|| fail(OUT_OF_MEMORY))?;
            let size = b.size;
            let Some(addr) = s.space.alloc(size, 256) else {
                b.remove_importer(slot);
                return Err(fail(OUT_OF_MEMORY));
            };
            s.table.regions.insert(
                addr,
                Region {
                    len: size,
                    kind: Kind::Import { b: Arc::new(b), phys: h.phys, ctx: cur, slot },
                },
            );
            put(pdptr, addr)
        })
    }
}

entry! {
    fn cuIpcCloseMemHandle(dptr: CUdeviceptr) {
        sim(|s| {
            let ok = matches!(s.table.find(dptr), Some((start, Region { kind: Kind::Import { .. }, .. })) if start == dptr);
            if !ok {
                return Err(viol(INVALID_VALUE, format!("{dptr:#x} is not the base of an open IPC memory mapping (closed twice, or never opened)")));
            }
            if let Some(Region { kind: Kind::Import { b, slot, .. }, .. }) = s.table.regions.remove(&dptr) {
                b.remove_importer(slot);
            }
            Ok(())
        })
    }
}

entry! {
    fn cuIpcGetEventHandle(handle: *mut CUipcEventHandle, event: CUevent) {
        sim(|s| {
            let e = ev(s, event)?;
            let need = EV_INTERPROCESS | EV_DISABLE_TIMING;
            let fd = match e.mem.fd() {
                Some(fd) if e.flags & need == need => fd,
                _ => {
                    return Err(viol(INVALID_VALUE, "event not created with CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING"))
                }
            };
            let raw = IpcHandle {
                pid: pid(),
                fd,
                pidns: s.pidns,
                id: e.mem.block().id,
                size: 0,
                phys: 0,
            }
            .encode(MAGIC_IPC_EVENT);
            put(handle, CUipcEventHandle { reserved: raw })
        })
    }
}

entry! {
    fn cuIpcOpenEventHandle(ph: *mut CUevent, handle: CUipcEventHandle) {
        sim(|s| {
            let cur = s.current()?;
            if ph.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            let Some(h) = IpcHandle::decode(&handle.reserved, MAGIC_IPC_EVENT) else {
                return Err(viol(INVALID_VALUE, "not an IPC event handle made by cuIpcGetEventHandle"));
            };
            if h.pidns != s.pidns {
                return Err(fail(INVALID_VALUE));
            }
            if h.pid == pid() {
                return Err(viol(INVALID_CONTEXT, "IPC event handle opened in the process that exported it"));
            }
            let Some(fd) = open_proc_fd(h.pid, h.fd) else {
                return Err(fail(INVALID_VALUE));
            };
            let Some(mem) = EvMem::open(fd, h.id) else {
                return Err(fail(INVALID_VALUE));
            };
            if mem.block().destroyed.load(Ordering::Acquire) != 0 {
                return Err(fail(INVALID_VALUE));
            }
            let flags = mem.block().flags;
            let id = s.id();
            let eh = Sim::event_handle(id);
            s.events.insert(
                eh,
                Event { ctx: cur, flags, mem: Arc::new(mem), imported: true },
            );
            put(ph, eh as CUevent)
        })
    }
}

// ---------------------------------------------------------------- VMM

fn check_location(s: &Sim, loc: &Location) -> R<usize> {
    if loc.type_ != abi::LOCATION_DEVICE {
        return Err(viol(
            INVALID_VALUE,
            format!("location type {} (only DEVICE is simulated)", loc.type_),
        ));
    }
    s.dev(loc.id)
}

entry! {
    fn cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const sys::CUmemAllocationProp, option: c_uint) {
        sim(|s| {
            if s.cfg.no_vmm {
                return Err(fail(NOT_SUPPORTED));
            }
            let p: AllocProp = get(prop.cast::<AllocProp>())?;
            check_location(s, &p.location)?;
            if option > 1 {
                return Err(viol(INVALID_VALUE, format!("unknown granularity option {option}")));
            }
            put(granularity, GRAN as usize)
        })
    }
}

entry! {
    fn cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const sys::CUmemAllocationProp, flags: c_ulonglong) {
        sim(|s| {
            s.current()?;
            if s.cfg.no_vmm {
                return Err(fail(NOT_SUPPORTED));
            }
            if handle.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            let p: AllocProp = get(prop.cast::<AllocProp>())?;
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            if p.type_ != abi::ALLOCATION_PINNED {
                return Err(viol(INVALID_VALUE, format!("allocation type {} (only PINNED is simulated)", p.type_)));
            }
            let ord = check_location(s, &p.location)?;
            if size == 0 || size as u64 % GRAN != 0 {
                return Err(viol(INVALID_VALUE, format!("size {size} is not a non-zero multiple of the granularity {GRAN}")));
            }
            if p.handle_types & !abi::HANDLE_POSIX_FD != 0 {
                return Err(fail(NOT_SUPPORTED));
            }
            let b = Backing::create(KIND_VMM, size as u64, s.phys(ord), p.handle_types).map_err(no_sim_mem)?;
            let id = s.id();
            let h = Sim::vmm_handle(id);
            s.vmm.insert(h, VmmHandle { b: Arc::new(b) });
            put(handle, h)
        })
    }
}

entry! {
    fn cuMemRelease(handle: CUmemGenericAllocationHandle) {
        sim(|s| match s.vmm.remove(&handle) {
            Some(_) => Ok(()),
            None => Err(viol(INVALID_VALUE, format!("{handle:#x} is not a live allocation handle (released twice, or never created)"))),
        })
    }
}

fn vmm_handle(s: &Sim, h: CUmemGenericAllocationHandle) -> R<Arc<Backing>> {
    s.vmm.get(&h).map(|v| v.b.clone()).ok_or_else(|| {
        viol(
            INVALID_VALUE,
            format!("{h:#x} is not a live allocation handle (released, or never created)"),
        )
    })
}

entry! {
    fn cuMemExportToShareableHandle(out: *mut c_void, handle: CUmemGenericAllocationHandle, kind: c_uint, flags: c_ulonglong) {
        sim(|s| {
            let b = vmm_handle(s, handle)?;
            if kind != abi::HANDLE_POSIX_FD {
                return Err(fail(NOT_SUPPORTED));
            }
            if b.header().handle_types & abi::HANDLE_POSIX_FD == 0 {
                return Err(viol(NOT_SUPPORTED, "allocation created without POSIX_FILE_DESCRIPTOR in requestedHandleTypes"));
            }
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            if out.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            // SAFETY: plain syscall on a descriptor we own; the new one is the caller's.
            let fd = unsafe { libc::fcntl(b.fd(), libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(fail(OUT_OF_MEMORY));
            }
            put(out.cast::<c_int>(), fd)
        })
    }
}

entry! {
    fn cuMemImportFromShareableHandle(handle: *mut CUmemGenericAllocationHandle, os_handle: *mut c_void, kind: c_uint) {
        sim(|s| {
            s.current()?;
            if kind != abi::HANDLE_POSIX_FD {
                return Err(fail(NOT_SUPPORTED));
            }
            if handle.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            let raw = os_handle as usize as c_int;
            // SAFETY: plain syscall; fails cleanly on a descriptor that is not open.
            let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                return Err(viol(INVALID_VALUE, format!("{raw} is not an open file descriptor")));
            }
            // SAFETY: a descriptor we just created.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let Some(b) = Backing::open(fd, KIND_VMM) else {
                return Err(viol(INVALID_VALUE, format!("descriptor {raw} is not a VMM allocation exported by cuMemExportToShareableHandle")));
            };
            if s.ordinal_of(b.header().phys).is_none() {
                return Err(fail(INVALID_DEVICE));
            }
            let id = s.id();
            let h = Sim::vmm_handle(id);
            s.vmm.insert(h, VmmHandle { b: Arc::new(b) });
            put(handle, h)
        })
    }
}

entry! {
    fn cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, _addr: CUdeviceptr, flags: c_ulonglong) {
        sim(|s| {
            s.current()?;
            if ptr.is_null() {
                return Err(viol(INVALID_VALUE, "null output pointer"));
            }
            if size == 0 || size as u64 % GRAN != 0 {
                return Err(viol(INVALID_VALUE, format!("size {size} is not a non-zero multiple of the granularity {GRAN}")));
            }
            if alignment != 0 && (!alignment.is_power_of_two() || (alignment as u64) < GRAN) {
                return Err(viol(INVALID_VALUE, format!("alignment {alignment} is not a power-of-two multiple of the granularity")));
            }
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            let a = s
                .space
                .alloc(size as u64, (alignment as u64).max(GRAN))
                .ok_or_else(|| fail(OUT_OF_MEMORY))?;
            s.table.regions.insert(
                a,
                Region { len: size as u64, kind: Kind::Reserve { maps: Default::default() } },
            );
            put(ptr, a)
        })
    }
}

entry! {
    fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) {
        sim(|s| {
            match s.table.find(ptr) {
                Some((start, Region { len, kind: Kind::Reserve { maps } })) if start == ptr => {
                    if *len != size as u64 {
                        return Err(viol(INVALID_VALUE, format!("size {size} differs from the reserved size {len}")));
                    }
                    if !maps.is_empty() {
                        return Err(viol(INVALID_VALUE, format!("reservation {ptr:#x} still has {} mapping(s): cuMemUnmap first", maps.len())));
                    }
                }
                _ => {
                    return Err(viol(INVALID_VALUE, format!("{ptr:#x} is not the start of a live reservation")))
                }
            }
            s.table.regions.remove(&ptr);
            Ok(())
        })
    }
}

/// The reservation holding `[ptr, ptr + size)` and the range's offset in it.
fn reservation(
    s: &mut Sim,
    ptr: CUdeviceptr,
    size: usize,
) -> R<(&mut std::collections::BTreeMap<u64, Mapping>, u64)> {
    let bad = || {
        viol(
            INVALID_VALUE,
            format!("[{ptr:#x}, +{size:#x}) is not inside one reservation"),
        )
    };
    let (start, r) = s.table.find(ptr).ok_or_else(bad)?;
    let rel = ptr - start;
    if rel + size as u64 > r.len {
        return Err(bad());
    }
    match &mut s.table.regions.get_mut(&start).expect("found").kind {
        Kind::Reserve { maps } => Ok((maps, rel)),
        _ => Err(bad()),
    }
}

/// Offsets of the mappings that `[rel, rel + size)` covers exactly.
fn covered(
    maps: &std::collections::BTreeMap<u64, Mapping>,
    rel: u64,
    size: u64,
) -> Option<Vec<u64>> {
    let end = rel + size;
    if let Some((o, m)) = maps.range(..rel).next_back() {
        if o + m.size > rel {
            return None;
        }
    }
    let hit: Vec<u64> = maps.range(rel..end).map(|(o, _)| *o).collect();
    let all_inside = maps.range(rel..end).all(|(o, m)| o + m.size <= end);
    (!hit.is_empty() && all_inside).then_some(hit)
}

entry! {
    fn cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: c_ulonglong) {
        sim(|s| {
            s.current()?;
            if flags != 0 {
                return Err(viol(INVALID_VALUE, format!("flags must be 0, got {flags}")));
            }
            let b = vmm_handle(s, handle)?;
            if offset != 0 {
                eprintln!("cuframes-sim: cuMemMap with a non-zero offset is not simulated");
                return Err(fail(NOT_SUPPORTED));
            }
            if size as u64 != b.size {
                return Err(viol(INVALID_VALUE, format!("size {size} differs from the allocation size {}", b.size)));
            }
            let (maps, rel) = reservation(s, ptr, size)?;
            if rel % GRAN != 0 {
                return Err(viol(INVALID_VALUE, format!("{ptr:#x} is not aligned to the granularity")));
            }
            let end = rel + size as u64;
            let overlaps = maps.range(..end).next_back().is_some_and(|(o, m)| o + m.size > rel);
            if overlaps {
                return Err(viol(INVALID_VALUE, format!("[{ptr:#x}, +{size:#x}) is already (partly) mapped")));
            }
            maps.insert(rel, Mapping { size: size as u64, backing: b, access: Default::default() });
            Ok(())
        })
    }
}

entry! {
    fn cuMemUnmap(ptr: CUdeviceptr, size: usize) {
        sim(|s| {
            let (maps, rel) = reservation(s, ptr, size)?;
            let Some(hit) = covered(maps, rel, size as u64) else {
                return Err(viol(INVALID_VALUE, format!("[{ptr:#x}, +{size:#x}) does not cover whole mappings")));
            };
            for o in hit {
                maps.remove(&o);
            }
            Ok(())
        })
    }
}

entry! {
    fn cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const sys::CUmemAccessDesc, count: usize) {
        sim(|s| {
            if desc.is_null() || count == 0 {
                return Err(viol(INVALID_VALUE, "no access descriptors"));
            }
            let mut want = Vec::new();
            for i in 0..count {
                // SAFETY: the caller passes `count` descriptors (the API contract).
                let d: AccessDesc = get(unsafe { desc.cast::<AccessDesc>().add(i) })?;
                let ord = check_location(s, &d.location).map_err(|e| match e.why {
                    Some(_) => e,
                    None => viol(INVALID_DEVICE, format!("access for device {} which is not visible", d.location.id)),
                })?;
                if ![0, PROT_READ, PROT_READWRITE].contains(&d.flags) {
                    return Err(viol(INVALID_VALUE, format!("unknown access flags {}", d.flags)));
                }
                want.push((s.phys(ord), d.flags));
            }
            let (maps, rel) = reservation(s, ptr, size)?;
            let Some(hit) = covered(maps, rel, size as u64) else {
                return Err(viol(INVALID_VALUE, format!("[{ptr:#x}, +{size:#x}) does not cover whole mappings")));
            };
            for o in hit {
                let m = maps.get_mut(&o).expect("covered");
                for (phys, f) in &want {
                    m.access.insert(*phys, *f);
                }
            }
            Ok(())
        })
    }
}

entry! {
    fn cuMemGetAccess(flags: *mut c_ulonglong, location: *const sys::CUmemLocation, ptr: CUdeviceptr) {
        sim(|s| {
            let loc: Location = get(location.cast::<Location>())?;
            let ord = check_location(s, &loc)?;
            let phys = s.phys(ord);
            let (maps, rel) = reservation(s, ptr, 1)?;
            match maps.range(..=rel).next_back() {
                Some((o, m)) if rel < o + m.size => {
                    put(flags, u64::from(m.access.get(&phys).copied().unwrap_or(0)))
                }
                _ => Err(viol(INVALID_VALUE, format!("{ptr:#x} is not mapped"))),
            }
        })
    }
}
