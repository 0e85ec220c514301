//! Memory: the PROT_NONE device address space, memfd-backed allocations
//! (their bytes live at a private "shadow" mapping), the range table, and
//! page-locked host ranges.

use crate::util::{self, round_up, viol, Fail, SendPtr, ILLEGAL_ADDRESS, INVALID_VALUE, R};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) const PAGE: u64 = 4096;
/// Bytes before the data in every allocation's memfd.
pub(crate) const HEADER: u64 = 4096;
/// VMM granularity (minimum and recommended).
pub(crate) const GRAN: u64 = 2 << 20;
/// Device addresses are handed out at this alignment, with a guard gap of
/// the same size after each range.
pub(crate) const SLOT: u64 = 64 << 10;

pub(crate) const MAGIC_ALLOC: u64 = u64::from_le_bytes(*b"CFSIMMEM");
pub(crate) const KIND_LEGACY: u32 = 1;
pub(crate) const KIND_VMM: u32 = 2;
pub(crate) const IMPORTER_SLOTS: usize = 64;

/// Access flags of a VMM mapping.
pub(crate) const PROT_READ: u32 = 1;
pub(crate) const PROT_READWRITE: u32 = 3;

/// Host registration flags.
pub(crate) const HOST_PORTABLE: u32 = 1;
pub(crate) const HOST_DEVICEMAP: u32 = 2;
pub(crate) const HOST_IOMEMORY: u32 = 4;
pub(crate) const HOST_READ_ONLY: u32 = 8;

/// The reserved device address range: nothing is ever mapped in it, so a
/// host dereference of a device pointer faults.
pub(crate) struct Space {
    base: u64,
    len: u64,
    next: u64,
}

impl Space {
    pub fn new() -> std::io::Result<Space> {
        let mut last = None;
        for shift in [42u32, 40, 36, 33, 30] {
            let len = 1u64 << shift;
            // SAFETY: a fresh anonymous PROT_NONE mapping at an address the
            // kernel picks; nothing else refers to it.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                let base = round_up(p as u64, GRAN);
                return Ok(Space {
                    base,
                    len: len - (base - p as u64),
                    // The first slot stays unused: no address is the base.
                    next: base + GRAN,
                });
            }
            last = Some(std::io::Error::last_os_error());
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("mmap failed")))
    }

    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.base + self.len
    }

    /// A fresh range of `len` bytes aligned to `align` (addresses are never
    /// reused, so a stale pointer never resolves to newer memory).
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let align = align.max(SLOT);
        let start = round_up(self.next, align);
        let end = start.checked_add(round_up(len.max(1), SLOT))?;
        if end + SLOT > self.base + self.len {
            return None;
        }
        self.next = end + SLOT;
        Some(start)
    }
}

/// Importer registry entry in an allocation's header (legacy IPC).
#[repr(C)]
pub(crate) struct Importer {
    pub pid: AtomicU32,
    _pad: u32,
    pub start: AtomicU64,
}

/// First page of every allocation's memfd, shared by all processes that map it.
#[repr(C)]
pub(crate) struct Header {
    pub magic: u64,
    pub id: u64,
    pub size: u64,
    pub phys: u32,
    pub kind: u32,
    pub handle_types: u32,
    pub freed: AtomicU32,
    pub owner_pid: u32,
    _pad: u32,
    pub importers: [Importer; IMPORTER_SLOTS],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER as usize);

/// A memfd mapped at a private shadow address: header page, then data.
pub(crate) struct Backing {
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    pub size: u64,
}

// SAFETY: the mapping is shared memory owned by this value until Drop; all
// concurrent access to it goes through atomics (header) or is the
// simulated device's (unsynchronised, like a real GPU's) access to data.
unsafe impl Send for Backing {}
// SAFETY: as above.
unsafe impl Sync for Backing {}

fn map_fd(fd: RawFd, len: usize) -> std::io::Result<*mut u8> {
    // SAFETY: maps `len` bytes of a file we hold open, shared, at an address
    // the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

pub(crate) fn memfd(name: &std::ffi::CStr, len: u64) -> std::io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned descriptor is new.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on our descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

impl Backing {
    /// A new allocation of `size` bytes on physical device `phys`.
    pub fn create(kind: u32, size: u64, phys: u32, handle_types: u32) -> std::io::Result<Backing> {
        let len = HEADER + round_up(size, PAGE);
        let fd = memfd(c"cuframes-sim-mem", len)?;
        let map = map_fd(fd.as_raw_fd(), len as usize)?;
        let b = Backing {
            fd,
            map,
            map_len: len as usize,
            size,
        };
        // SAFETY: the header page is ours, zero-filled and not yet shared
        // with anyone (the fd has not left this function).
        unsafe {
            let h = b.map.cast::<Header>();
            (*h).magic = MAGIC_ALLOC;
            (*h).id = util::random_u64();
            (*h).size = size;
            (*h).phys = phys;
            (*h).kind = kind;
            (*h).handle_types = handle_types;
            (*h).owner_pid = util::pid();
        }
        Ok(b)
    }

    /// Maps an allocation made by some process from its memfd; `None` when
    /// the file is not one.
    pub fn open(fd: OwnedFd, kind: u32) -> Option<Backing> {
        // SAFETY: fstat into a zeroed struct on a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 || (st.st_size as u64) < HEADER {
            return None;
        }
        let len = st.st_size as usize;
        let map = map_fd(fd.as_raw_fd(), len).ok()?;
        let mut b = Backing {
            fd,
            map,
            map_len: len,
            size: 0,
        };
        let h = b.header();
        let (ok, size) = (
            h.magic == MAGIC_ALLOC && h.kind == kind && HEADER + h.size <= len as u64,
            h.size,
        );
        if !ok {
            return None;
        }
        b.size = size;
        Some(b)
    }

    pub fn header(&self) -> &Header {
        // SAFETY: the first page of the mapping holds a Header (checked by
        // `open`, written by `create`); it lives as long as `self`.
        unsafe { &*self.map.cast::<Header>() }
    }

    pub fn data(&self) -> *mut u8 {
        // SAFETY: the mapping is at least HEADER bytes long.
        unsafe { self.map.add(HEADER as usize) }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Zeroes `len` bytes of data at `off` by punching a hole where whole
    /// pages allow it; false if the caller has to write the zeros itself.
    pub fn punch_zero(&self, off: u64, len: u64) -> bool {
        let start = HEADER + off;
        let (a, b) = (round_up(start, PAGE), (start + len) / PAGE * PAGE);
        if b <= a || b - a < (1 << 20) {
            return false;
        }
        // SAFETY: plain syscall on our descriptor; the hole lies inside the file.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                a as libc::off_t,
                (b - a) as libc::off_t,
            )
        };
        if r != 0 {
            return false;
        }
        // SAFETY: the edges lie inside the data of this mapping.
        unsafe {
            std::ptr::write_bytes(self.map.add(start as usize), 0, (a - start) as usize);
            std::ptr::write_bytes(self.map.add(b as usize), 0, (start + len - b) as usize);
        }
        true
    }

    /// Registers this process as an importer; the slot index.
    pub fn add_importer(&self) -> Option<usize> {
        let me = util::pid();
        let start = util::self_start_time();
        for pass in 0..2 {
            for (i, s) in self.header().importers.iter().enumerate() {
                let cur = s.pid.load(Ordering::Acquire);
                let free = cur == 0
                    || (pass == 1
                        && util::pid_alive(cur, s.start.load(Ordering::Acquire)) == Some(false));
                if free
                    && s.pid
                        .compare_exchange(cur, me, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    s.start.store(start, Ordering::Release);
                    return Some(i);
                }
            }
        }
        None
    }

    pub fn remove_importer(&self, slot: usize) {
        let s = &self.header().importers[slot];
        let _ = s
            .pid
            .compare_exchange(util::pid(), 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Importers in other live processes.
    pub fn live_importers(&self) -> usize {
        let me = util::pid();
        self.header()
            .importers
            .iter()
            .filter(|s| {
                let p = s.pid.load(Ordering::Acquire);
                p != 0
                    && p != me
                    && util::pid_alive(p, s.start.load(Ordering::Acquire)) == Some(true)
            })
            .count()
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value owns; no reference into it
        // outlives `self` (ops keep an Arc while they run).
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

/// One VMM mapping inside a reservation.
pub(crate) struct Mapping {
    pub size: u64,
    pub backing: Arc<Backing>,
    /// Access flags per physical device.
    pub access: HashMap<u32, u32>,
}

pub(crate) enum Kind {
    /// cuMemAlloc.
    Alloc {
        b: Arc<Backing>,
        phys: u32,
        ctx: usize,
    },
    /// cuIpcOpenMemHandle.
    Import {
        b: Arc<Backing>,
        phys: u32,
        ctx: usize,
        slot: usize,
    },
    /// Device alias of page-locked host memory (cuMemHostGetDevicePointer).
    Alias {
        host: usize,
        flags: u32,
        phys: u32,
        token: Arc<()>,
    },
    /// cuMemAddressReserve, with the mappings in it by offset.
    Reserve { maps: BTreeMap<u64, Mapping> },
}

pub(crate) struct Region {
    pub len: u64,
    pub kind: Kind,
}

/// A page-locked host range.
pub(crate) struct Pinned {
    pub len: usize,
    pub flags: u32,
    pub alloc_host: bool,
    pub alias: Option<u64>,
    pub phys: u32,
    /// Cloned by every queued op that touches the range.
    pub token: Arc<()>,
}

/// What keeps the bytes of a resolved range alive while an op uses them.
#[derive(Clone)]
pub(crate) enum Keep {
    Backing(Arc<Backing>),
    /// Held for its reference count (see [`Pinned::token`]).
    Token(#[allow(dead_code)] Arc<()>),
    /// Pageable host memory of a synchronous call: valid while it waits.
    Caller,
}

/// A resolved range: where its bytes are in this process.
#[derive(Clone)]
pub(crate) struct Span {
    pub ptr: SendPtr,
    pub keep: Keep,
}

impl Span {
    /// The backing memfd and the data offset of `ptr` in it, if any.
    pub fn backing_offset(&self) -> Option<(&Arc<Backing>, u64)> {
        match &self.keep {
            Keep::Backing(b) => Some((b, self.ptr.0 as u64 - b.data() as u64)),
            Keep::Token(_) | Keep::Caller => None,
        }
    }
}

/// Host memory as a copy sees it.
pub(crate) enum Host {
    Pinned(Span),
    Pageable,
}

/// The range table of one process.
#[derive(Default)]
pub(crate) struct Table {
    pub regions: BTreeMap<u64, Region>,
    pub pinned: BTreeMap<usize, Pinned>,
}

impl Table {
    /// The region holding `addr`.
    pub fn find(&self, addr: u64) -> Option<(u64, &Region)> {
        let (s, r) = self.regions.range(..=addr).next_back()?;
        (addr < s + r.len).then_some((*s, r))
    }

    /// Resolves `len` bytes of device memory at `addr` for an op that runs
    /// on physical device `phys`.
    pub fn resolve(&self, space: &Space, addr: u64, len: u64, phys: u32, write: bool) -> R<Span> {
        let what = if write { "write to" } else { "read from" };
        let Some((start, r)) = self.find(addr) else {
            return Err(if space.contains(addr) {
                viol(
                    INVALID_VALUE,
                    format!("{what} device address {addr:#x}: not inside any live allocation (freed, closed, unmapped, or never allocated)"),
                )
            } else {
                viol(
                    INVALID_VALUE,
                    format!("{what} {addr:#x}: not a device address (a host pointer where device memory is expected?)"),
                )
            });
        };
        let rel = addr - start;
        let end = rel.checked_add(len);
        let out_of = |kind: &str, size: u64| {
            viol(
                INVALID_VALUE,
                format!("{what} {len} bytes at {addr:#x}: runs past the end of the {kind} of {size} bytes at {start:#x} (offset {rel})"),
            )
        };
        let wrong_dev = |owner: u32| {
            viol(
                INVALID_VALUE,
                format!("{what} {addr:#x}: memory of device {owner} used on a stream/context of device {phys}"),
            )
        };
        match &r.kind {
            Kind::Alloc { b, phys: p, .. } | Kind::Import { b, phys: p, .. } => {
                if end.is_none_or(|e| e > b.size) {
                    return Err(out_of("allocation", b.size));
                }
                if *p != phys {
                    return Err(wrong_dev(*p));
                }
                Ok(Span {
                    // SAFETY: rel + len <= size: inside the data.
                    ptr: SendPtr(unsafe { b.data().add(rel as usize) }),
                    keep: Keep::Backing(b.clone()),
                })
            }
            Kind::Alias {
                host,
                flags,
                phys: p,
                token,
            } => {
                if end.is_none_or(|e| e > r.len) {
                    return Err(out_of("registered host range", r.len));
                }
                if flags & HOST_PORTABLE == 0 && *p != phys {
                    return Err(wrong_dev(*p));
                }
                if write && flags & HOST_READ_ONLY != 0 {
                    return Err(viol(
                        ILLEGAL_ADDRESS,
                        format!("write to {addr:#x}: host memory registered READ_ONLY"),
                    ));
                }
                Ok(Span {
                    ptr: SendPtr((host + rel as usize) as *mut u8),
                    keep: Keep::Token(token.clone()),
                })
            }
            Kind::Reserve { maps } => {
                let m = maps
                    .range(..=rel)
                    .next_back()
                    .filter(|(o, m)| end.is_some_and(|e| e <= **o + m.size));
                let Some((off, m)) = m else {
                    return Err(viol(
                        INVALID_VALUE,
                        format!("{what} {len} bytes at {addr:#x}: not inside one VMM mapping of the reservation at {start:#x}"),
                    ));
                };
                match m.access.get(&phys).copied().unwrap_or(0) {
                    PROT_READWRITE => {}
                    PROT_READ if !write => {}
                    PROT_READ => {
                        return Err(viol(
                            ILLEGAL_ADDRESS,
                            format!("write to {addr:#x}: write to read-only VMM mapping (device {phys})"),
                        ))
                    }
                    _ => {
                        return Err(viol(
                            INVALID_VALUE,
                            format!("{what} {addr:#x}: VMM mapping not accessible from device {phys} (cuMemSetAccess not called for it)"),
                        ))
                    }
                }
                Ok(Span {
                    // SAFETY: rel - off + len <= size: inside the data.
                    ptr: SendPtr(unsafe { m.backing.data().add((rel - off) as usize) }),
                    keep: Keep::Backing(m.backing.clone()),
                })
            }
        }
    }

    /// The page-locked range fully holding `[p, p + len)`.
    pub fn pinned_at(&self, p: usize, len: usize) -> Option<(usize, &Pinned)> {
        let (s, r) = self.pinned.range(..=p).next_back()?;
        (p + len <= s + r.len).then_some((*s, r))
    }

    /// Classifies host memory a copy reads or writes.
    pub fn host(&self, space: &Space, p: usize, len: usize, write: bool) -> R<Host> {
        if p == 0 {
            return Err(viol(INVALID_VALUE, "null host pointer"));
        }
        if space.contains(p as u64) {
            return Err(viol(
                INVALID_VALUE,
                format!("{p:#x} is a device address, passed where a host pointer is expected"),
            ));
        }
        match self.pinned_at(p, len) {
            Some((_, r)) => {
                if write && r.flags & HOST_READ_ONLY != 0 {
                    return Err(viol(
                        ILLEGAL_ADDRESS,
                        format!("copy into {p:#x}: host memory registered READ_ONLY"),
                    ));
                }
                Ok(Host::Pinned(Span {
                    ptr: SendPtr(p as *mut u8),
                    keep: Keep::Token(r.token.clone()),
                }))
            }
            None => Ok(Host::Pageable),
        }
    }

    /// Any page-locked range overlapping `[p, p + len)`.
    pub fn pinned_overlap(&self, p: usize, len: usize) -> bool {
        if let Some((s, r)) = self.pinned.range(..p + len).next_back() {
            return s + r.len > p;
        }
        false
    }
}

/// A failure to create a memfd or mapping.
pub(crate) fn oom(e: std::io::Error) -> Fail {
    eprintln!("cuframes-sim: host resources exhausted: {e}");
    util::fail(util::OUT_OF_MEMORY)
}
