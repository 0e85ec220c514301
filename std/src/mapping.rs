//! Segment files: creation (publisher), opening with checks (everyone
//! else), the memory mapping, and the [`Shared`] ring handle with futex
//! wake-ups and the lock-based liveness protocol.

use crate::guard;
use crate::key::segment_path;
use crate::ofd;
use crate::sys;
use crate::{Error, ErrorCode, Result};
use cuframes_core::{MemoryKind, Ring, RingRef, SegmentHeader, SegmentInfo, Wake};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use zerocopy::IntoBytes;

/// Largest segment accepted on open (a hostile size cannot make us map
/// terabytes).
const MAX_SEGMENT: u64 = 1 << 36;

/// Byte of the segment file whose OFD lock marks a live publisher; record
/// `i` of the subscriber table is marked by byte `i` (`i < 63`). The bytes
/// are lock coordinates only: locks do not touch the file's contents.
pub(crate) const PUBLISHER_LOCK_BYTE: u64 = 63;

/// A shared mapping of a whole segment file, registered with the SIGBUS
/// guard for its whole life.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// `None` only if the guard's table was full (the mapping then works
    /// unguarded, as before the guard existed).
    guard: Option<guard::Region>,
}

// SAFETY: the mapping is plain shared memory; every access to its live
// regions goes through atomics, and slot data is handed out only under a
// lease that grants exclusive (writer) or shared read-only (readers) access.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` exposes nothing but the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `file` shared, read-write or read-only.
    pub(crate) fn map(file: &File, len: u64, writable: bool) -> Result<Self> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of a file
        // we hold open; nothing else aliases it in this process yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                MapFlags::SHARED,
                file,
                0,
            )
        }
        .map_err(|e| Error::io("mmap", e.into()))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::new(ErrorCode::Io, "mmap returned null"))?;
        let len = len as usize;
        Ok(Self {
            ptr,
            len,
            guard: guard::register(ptr.as_ptr(), len),
        })
    }

    /// Whether the SIGBUS guard found this mapping's file truncated and
    /// replaced the mapping with zero pages.
    pub(crate) fn lost(&self) -> bool {
        self.guard.as_ref().is_some_and(guard::Region::lost)
    }

    /// Whether the guard table had room for this mapping.
    #[cfg(test)]
    pub(crate) fn guard_registered(&self) -> bool {
        self.guard.is_some()
    }

    /// Makes `[offset, offset + len)` read-only. Both ends are rounded
    /// inwards to the system page size (the protocol aligns regions to
    /// 4 KiB; a larger page leaves its partial pages writable), so no byte
    /// outside the range (a table another region shares a page with) ever
    /// becomes read-only.
    fn protect_read_only(&self, offset: usize, len: usize) -> Result<()> {
        // SAFETY: sysconf only reads a system constant.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => 4096,
        };
        let start = offset.next_multiple_of(page);
        let end = offset.saturating_add(len).min(self.len) / page * page;
        if start >= end {
            return Ok(());
        }
        // SAFETY: [start, end) lies inside our mapping (checked above); only
        // its protection changes, and no `&mut` into it exists in this
        // process (a subscriber only reads slot data).
        unsafe {
            rustix::mm::mprotect(
                self.ptr.as_ptr().add(start).cast(),
                end - start,
                MprotectFlags::READ,
            )
        }
        .map_err(|e| Error::io("mprotect slot data read-only", e.into()))
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Copies the header out with a volatile read: other processes may be
    /// writing it, so it is read once and only the copy is validated and used.
    fn read_header(&self) -> SegmentHeader {
        // SAFETY: the mapping is at least `size_of::<SegmentHeader>()` bytes
        // (checked before mapping), page aligned, and SegmentHeader is
        // FromBytes, so any bytes form a valid value.
        unsafe { std::ptr::read_volatile(self.ptr.as_ptr().cast::<SegmentHeader>()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister first: once unmapped, the range may be reused by an
        // unrelated mapping whose faults the guard must not swallow.
        drop(self.guard.take());
        // SAFETY: we mapped exactly this range and no reference into it
        // outlives the Mapping (Shared drops its Ring first; grants keep the
        // Shared alive through an Arc).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A mapped, validated segment: the ring handle the grants keep.
pub(crate) struct Shared {
    // Borrows `map`: declared first so it is dropped before the unmap.
    ring: Ring<'static>,
    pub(crate) info: SegmentInfo,
    map: Mapping,
    /// The segment file, open (read-write when the mapping is writable) for
    /// the handle's whole life: the OFD locks held through it are the
    /// liveness signal, and `fstat` on it notices a truncation.
    file: File,
    /// Whether this handle took the publisher lock ([`Shared::lock_publisher`]).
    holds_publisher_lock: AtomicBool,
    pub(crate) path: PathBuf,
    /// (device, inode) of the file, to notice a replacement at `path`.
    pub(crate) file_id: (u64, u64),
    /// `path` is still the private temporary name [`Shared::create`] gave
    /// the file: [`Shared::install`] has not put it in place. Such a file is
    /// removed on drop, so a creation that fails after `create` (the
    /// publisher lock, the backend's init, the rename) leaves no segment-sized
    /// file behind in the shm file system.
    temporary: bool,
}

impl Shared {
    fn new(
        map: Mapping,
        file: File,
        info: SegmentInfo,
        path: PathBuf,
        file_id: (u64, u64),
    ) -> Self {
        // SAFETY: `map` is a live mapping of `info.header.segment_len` bytes
        // (page aligned) whose header validated into `info`; it is moved into
        // the same struct as the Ring and outlives it (field order); we never
        // form `&mut` or byte slices over the live regions.
        let ring = unsafe { Ring::from_segment(map.base(), &info) };
        Self {
            ring,
            info,
            map,
            file,
            holds_publisher_lock: AtomicBool::new(false),
            path,
            file_id,
            temporary: false,
        }
    }

    /// Opens and validates an existing segment. A `writable` handle (a
    /// subscriber) maps the control area read-write but host slot data
    /// read-only: a subscriber cannot scribble over frames others read.
    pub(crate) fn open(key: &str, writable: bool, allow_other_owner: bool) -> Result<Self> {
        let path = segment_path(key);
        let file = File::options()
            .read(true)
            .write(writable)
            .custom_flags(
                rustix::fs::OFlags::NOFOLLOW.bits() as i32
                    | rustix::fs::OFlags::CLOEXEC.bits() as i32,
            )
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::new(ErrorCode::NotFound, format!("no stream {key:?}"))
                }
                _ => Error::io(format!("open {}", path.display()), e),
            })?;
        let meta = file.metadata().map_err(|e| Error::io("fstat", e))?;
        check_file(&meta, allow_other_owner)?;
        let len = meta.len();
        if len < std::mem::size_of::<SegmentHeader>() as u64 {
            return Err(cuframes_core::ValidateError::TooSmall { len }.into());
        }
        if len > MAX_SEGMENT {
            return Err(Error::new(
                ErrorCode::Corrupt,
                format!("segment of {len} bytes is implausibly large"),
            ));
        }
        let map = Mapping::map(&file, len, writable)?;
        let info = SegmentInfo::check(map.read_header(), len)?;
        // GPU kinds keep the backend writable: subscribers write release rows
        // there.
        if writable && info.memory == MemoryKind::Host {
            let h = &info.header;
            map.protect_read_only(h.backend_offset as usize, h.backend_len as usize)?;
        }
        Ok(Self::new(map, file, info, path, (meta.dev(), meta.ino())))
    }

    /// Creates a segment from a planned header under a temporary name,
    /// zero-filled, with the header written; [`Shared::install`] makes it
    /// visible.
    pub(crate) fn create(key: &str, header: &SegmentHeader, mode: u32) -> Result<Self> {
        let path = segment_path(key);
        let tmp = path.with_file_name(format!(
            ".{}.{}.{:x}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cuframes"),
            sys::pid(),
            sys::random_u64()
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let cleanup = |e: Error| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        // The umask must not widen or narrow what the caller asked for.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| cleanup(Error::io("set segment mode", e)))?;
        reserve(&file, header, &tmp).map_err(cleanup)?;
        let meta = file
            .metadata()
            .map_err(|e| cleanup(Error::io("fstat", e)))?;
        let map = Mapping::map(&file, header.segment_len, true).map_err(cleanup)?;
        // SAFETY: the file is new and private to us until renamed into place;
        // the mapping is at least header-sized; a byte copy of a plain header.
        unsafe {
            std::ptr::copy_nonoverlapping(
                header.as_bytes().as_ptr(),
                map.base(),
                header.as_bytes().len(),
            );
        }
        let info =
            SegmentInfo::check(*header, header.segment_len).map_err(|e| cleanup(e.into()))?;
        let mut shared = Self::new(map, file, info, tmp, (meta.dev(), meta.ino()));
        shared.temporary = true;
        Ok(shared)
    }

    /// Atomically puts a created segment in place at the key's path,
    /// replacing any previous one (whose mappings stay valid for the
    /// subscribers still holding them).
    pub(crate) fn install(&mut self, key: &str) -> Result<()> {
        let path = segment_path(key);
        std::fs::rename(&self.path, &path).map_err(|e| Error::io("install segment", e))?;
        self.path = path;
        self.temporary = false;
        Ok(())
    }

    /// Whether the publisher that made this segment still lives: this handle
    /// holds the publisher lock, or another open file description (any
    /// process, any pid namespace) does. An error counts as alive: a live
    /// publisher must never be declared dead.
    pub(crate) fn publisher_alive(&self) -> bool {
        self.holds_publisher_lock.load(Ordering::Acquire)
            || ofd::locked_by_other(&self.file, PUBLISHER_LOCK_BYTE).unwrap_or(true)
    }

    /// Whether `path` still names this segment's file.
    pub(crate) fn is_current(&self) -> bool {
        file_id(&self.path) == Some(self.file_id)
    }

    /// Removes the segment file if it is still ours.
    pub(crate) fn unlink_if_current(&self) {
        if self.is_current() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Runs `init` over the backend area of a segment that is not yet
    /// installed (only this process can see it).
    pub(crate) fn with_private_backend(
        &mut self,
        init: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let h = &self.info.header;
        self.with_private_range((h.backend_offset, h.backend_len), init)
    }

    /// Writes a packet stream's codec configuration before install.
    pub(crate) fn write_extradata(&mut self, extradata: &[u8]) -> Result<()> {
        let (start, end) = self.info.extradata_range();
        self.with_private_range((start, end - start), |area| {
            area.copy_from_slice(extradata);
            Ok(())
        })
    }

    /// Runs `init` over `(offset, len)`, a region validation proved in the
    /// mapping and outside the live structures, of a segment that is not
    /// yet installed (only this process can see it).
    fn with_private_range(
        &mut self,
        (offset, len): (u64, u64),
        init: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        debug_assert!(self.temporary);
        // SAFETY: the segment file is still under its private temporary
        // name, so no other process maps it; `&mut self` excludes other users
        // in this process; callers pass a region validation proved lies in
        // the mapping and overlaps no live structure.
        init(unsafe {
            std::slice::from_raw_parts_mut(self.map.base().add(offset as usize), len as usize)
        })
    }

    /// A copy of a packet stream's codec configuration (empty for frames).
    pub(crate) fn extradata(&self) -> Vec<u8> {
        let (start, end) = self.info.extradata_range();
        let mut out = vec![0u8; (end - start) as usize];
        // SAFETY: validation proved [start, end) lies in the mapping; it is
        // written once before the segment is installed, and a byte copy of
        // memory a hostile peer might change yields only wrong bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.base().add(start as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        out
    }

    /// Start and length of the backend area.
    pub(crate) fn backend_area(&self) -> (*mut u8, usize) {
        let h = &self.info.header;
        // SAFETY: validation proved [backend_offset, +backend_len) lies in the mapping.
        (
            unsafe { self.map.base().add(h.backend_offset as usize) },
            h.backend_len as usize,
        )
    }

    /// Start of slot `slot`'s data (host memory).
    pub(crate) fn slot_ptr(&self, slot: u32) -> Option<*mut u8> {
        let (start, _) = self.info.host_slot_range(slot)?;
        // SAFETY: validation proved the slot range lies inside the mapping.
        Some(unsafe { self.map.base().add(start as usize) })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The liveness locks (see [`crate::ofd`] for why OFD locks) and the
/// integrity check.
impl Shared {
    /// Takes the publisher lock for this handle (the segment's creator,
    /// before or right after [`install`](Self::install)); it is held until
    /// the handle is dropped or its process dies. `AlreadyExists` if another
    /// handle holds it.
    pub(crate) fn lock_publisher(&self) -> Result<()> {
        match ofd::try_lock(&self.file, PUBLISHER_LOCK_BYTE) {
            Ok(true) => {
                self.holds_publisher_lock.store(true, Ordering::Release);
                Ok(())
            }
            Ok(false) => Err(Error::new(
                ErrorCode::AlreadyExists,
                format!(
                    "segment {} already has a live publisher",
                    self.path.display()
                ),
            )),
            Err(e) => Err(Error::io("lock segment for the publisher", e)),
        }
    }

    /// Takes the lock of subscriber record `i` without waiting: `Ok(false)`
    /// if another handle holds it (its owner lives). Needs a writable handle.
    pub(crate) fn try_lock_record(&self, i: u32) -> Result<bool> {
        let byte = record_byte(i)?;
        ofd::try_lock(&self.file, byte).map_err(|e| Error::io(format!("lock record {i}"), e))
    }

    /// Releases this handle's lock of record `i` (nothing if it holds none).
    /// Cannot fail for a valid record of an open file; dropping the handle
    /// releases every lock anyway.
    pub(crate) fn unlock_record(&self, i: u32) {
        if let Ok(byte) = record_byte(i) {
            let r = ofd::unlock(&self.file, byte);
            debug_assert!(r.is_ok(), "unlock record {i}: {r:?}");
        }
    }

    /// Whether another handle (any process) holds the lock of record `i`,
    /// that is, whether the record's owner lives. A lock held by this handle
    /// does not count. Errors count as alive: a record is never reclaimed on
    /// doubt.
    pub(crate) fn record_locked_by_other(&self, i: u32) -> bool {
        match record_byte(i) {
            Ok(byte) => ofd::locked_by_other(&self.file, byte).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// `Err(Corrupt)` when the segment file was truncated or resized under
    /// this process: the SIGBUS guard replaced the mapping with zero pages,
    /// or the file's size is no longer `segment_len`. One `fstat`: cheap
    /// enough for every wait slice.
    pub(crate) fn check_intact(&self) -> Result<()> {
        let expected = self.info.header.segment_len;
        let gone = |what: String| {
            Err(Error::new(
                ErrorCode::Corrupt,
                format!(
                    "segment file {} was truncated or resized under this process ({what})",
                    self.path.display()
                ),
            ))
        };
        if self.map.lost() {
            return gone(format!(
                "an access faulted past its end; the mapping now reads zeros, {expected} bytes expected"
            ));
        }
        let len = rustix::fs::fstat(&self.file)
            .map_err(|e| Error::io("fstat segment", e.into()))?
            .st_size;
        if u64::try_from(len).ok() != Some(expected) {
            return gone(format!("now {len} bytes, {expected} expected"));
        }
        Ok(())
    }
}

/// Gives a new segment file its size with every page allocated now.
///
/// tmpfs allocates pages lazily: `set_len` alone succeeds on a full file
/// system and the first write past the free space raises `SIGBUS` (which the
/// guard turns into zero pages and a `Corrupt` error later, far from the
/// cause). `fallocate` (mode 0: allocate and extend) fails instead, with
/// `ENOSPC`, and tmpfs gives back what it allocated before failing; the
/// caller removes the temporary file. No room is `Capacity` (a bound is
/// exhausted, and creation has no other `Capacity` error), with a message
/// that says what to change.
///
/// File systems without `fallocate` (`EOPNOTSUPP`: ramfs, some FUSE and
/// network file systems; `ENOSYS`, or `EPERM` on a file we just created,
/// which is neither immutable nor sealed: a seccomp filter refusing the
/// call) fall back to `set_len` after a `statvfs` check of the free space.
/// That reserves nothing: there, running out of space later is still caught
/// only by the SIGBUS guard.
fn reserve(file: &File, header: &SegmentHeader, tmp: &Path) -> Result<()> {
    use rustix::io::Errno;
    let len = header.segment_len;
    // tmpfs stops on a pending signal and undoes what it allocated; a
    // process with a fast periodic signal (a profiler's timer) could retry
    // for ever, so retries are bounded and then reported.
    let mut interrupted = 0;
    loop {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) if interrupted < 64 => interrupted += 1,
            Err(e @ (Errno::NOSPC | Errno::DQUOT | Errno::NOMEM)) => {
                let vfs = rustix::fs::fstatvfs(file).ok();
                let why = format!("fallocate: {}", std::io::Error::from(e));
                return Err(no_room(header, tmp, vfs, e == Errno::NOMEM, &why));
            }
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::PERM) => break,
            Err(e) => return Err(Error::io("reserve segment space (fallocate)", e.into())),
        }
    }
    if let Ok(vfs) = rustix::fs::fstatvfs(file) {
        // f_blocks == 0: the file system reports no size (ramfs); nothing to
        // check. f_bfree, not f_bavail: never refuse what root could use.
        if vfs.f_blocks != 0 && vfs.f_bfree.saturating_mul(vfs.f_frsize) < len {
            let why = "statvfs; this file system has no fallocate";
            return Err(no_room(header, tmp, Some(vfs), false, why));
        }
    }
    file.set_len(len).map_err(|e| Error::io("size segment", e))
}

/// Default size of `/dev/shm` in a Docker container (`--shm-size`).
const DOCKER_DEFAULT_SHM: u64 = 64 << 20;

/// Bytes as `N bytes (X.Y MiB)`.
fn bytes_mib(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / f64::from(1u32 << 20))
}

/// The `Capacity` error for a segment that does not fit in the shm file
/// system: how big the ring is, how much room there is, where, and what to
/// change. `oom`: the memory (cgroup) ran out rather than the file system;
/// `why`: what said so.
fn no_room(
    header: &SegmentHeader,
    tmp: &Path,
    vfs: Option<rustix::fs::StatVfs>,
    oom: bool,
    why: &str,
) -> Error {
    let len = header.segment_len;
    let dir = tmp.parent().unwrap_or(Path::new("."));
    let room = match vfs {
        Some(v) if v.f_blocks != 0 => format!(
            "{} free of {}",
            bytes_mib(v.f_bavail.saturating_mul(v.f_frsize)),
            bytes_mib(v.f_blocks.saturating_mul(v.f_frsize))
        ),
        _ => "free space unknown".to_owned(),
    };
    let host = header.memory_kind == MemoryKind::Host as u32 && header.slot_stride > 0;
    // GPU streams keep their slots on the device: their segment holds tables
    // and handles only, so the slot arithmetic does not apply.
    let (parts, docker, slots) = if host {
        let tables = len.saturating_sub(header.backend_len);
        let fit = DOCKER_DEFAULT_SHM.saturating_sub(tables) / header.slot_stride;
        (
            format!(
                " = {} slots of {} bytes + {} bytes of tables",
                header.slot_count, header.slot_stride, tables
            ),
            format!(" (the default 64 MiB holds {fit} slots of this frame size)"),
            "; or use fewer or smaller slots",
        )
    } else {
        (String::new(), String::new(), "")
    };
    let (what, fix) = if oom {
        (
            "out of memory while allocating",
            "tmpfs pages count against the memory limit of the cgroup (container) that \
             allocates them: raise that limit"
                .to_owned(),
        )
    } else {
        (
            "no room for",
            format!("in Docker raise --shm-size{docker}{slots}"),
        )
    };
    Error::new(
        ErrorCode::Capacity,
        format!(
            "{what} the segment in {dir}: it needs {need}{parts}; the file system has {room} \
             ({why}). To fix: {fix}; or set CUFRAMES_SHM_DIR to a directory on a \
             larger tmpfs. Stale files take room too: a crashed publisher's segment stays until \
             its key is published again, a replaced or removed one until its last subscriber \
             lets go (docs/operations.md, \"Containers\")",
            dir = dir.display(),
            need = bytes_mib(len),
        ),
    )
}

/// Lock byte of subscriber record `i`.
fn record_byte(i: u32) -> Result<u64> {
    if u64::from(i) < PUBLISHER_LOCK_BYTE {
        Ok(u64::from(i))
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("record {i} has no lock byte (at most {PUBLISHER_LOCK_BYTE} records)"),
        ))
    }
}

pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn check_file(meta: &std::fs::Metadata, allow_other_owner: bool) -> Result<()> {
    if !meta.file_type().is_file() {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "segment is not a regular file",
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if !allow_other_owner && meta.uid() != me {
        return Err(Error::new(
            ErrorCode::Permission,
            format!(
                "segment owned by uid {} (we are {me}); refusing a foreign segment",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(Error::new(
            ErrorCode::Permission,
            "segment is world-writable; refusing it",
        ));
    }
    Ok(())
}

impl RingRef for Shared {
    fn ring(&self) -> &Ring<'_> {
        &self.ring
    }

    fn wake(&self, who: Wake) {
        let ctl = self.ring.control();
        match who {
            Wake::Readers => sys::futex_wake_all(&ctl.notify),
            Wake::Writer => sys::futex_wake_all(&ctl.space),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cuframes_core::{Backend, FrameLayout, Identity, PixelFormat, RingParams};

    /// A host segment created and installed under a fresh key in the temp
    /// directory (as the doc tests do), unlinked on drop.
    struct Segment(Shared);

    impl Segment {
        fn new(tag: &str) -> (Self, String) {
            std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
            let key = format!("mapping-{tag}-{}", std::process::id());
            let layout = FrameLayout::new(PixelFormat::Gray8, 64, 48, 64).unwrap();
            let who = Identity {
                epoch: 1,
                ..Default::default()
            };
            let header =
                SegmentHeader::plan(&layout, &RingParams::default(), &Backend::HOST, &who).unwrap();
            let mut shared = Shared::create(&key, &header, 0o600).unwrap();
            shared.install(&key).unwrap();
            (Self(shared), key)
        }
    }

    impl Drop for Segment {
        fn drop(&mut self) {
            self.0.unlink_if_current();
        }
    }

    /// Permissions (`rw-s`, ...) of the `/proc/self/maps` line holding `addr`.
    fn perms_at(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                let (lo, hi) = fields.next()?.split_once('-')?;
                let lo = usize::from_str_radix(lo, 16).ok()?;
                let hi = usize::from_str_radix(hi, 16).ok()?;
                (lo..hi)
                    .contains(&addr)
                    .then(|| fields.next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("{addr:#x} is not mapped"))
    }

    #[test]
    fn subscriber_maps_host_slot_data_read_only() {
        let (publisher, key) = Segment::new("ro");
        let sub = Shared::open(&key, true, false).unwrap();
        let base = sub.map.base() as usize;
        let (data, data_len) = sub.backend_area();
        let data = data as usize;
        assert_eq!(perms_at(base), "rw-s", "header and control");
        assert_eq!(perms_at(data - 1), "rw-s", "records, just below the data");
        assert_eq!(perms_at(data), "r--s", "slot data");
        assert_eq!(perms_at(data + data_len - 1), "r--s", "end of slot data");
        // The publisher's own mapping stays writable.
        let (pub_data, _) = publisher.0.backend_area();
        assert_eq!(perms_at(pub_data as usize), "rw-s");
        // A read-only handle maps everything read-only.
        let monitor = Shared::open(&key, false, false).unwrap();
        assert_eq!(perms_at(monitor.map.base() as usize), "r--s");
    }

    #[test]
    fn publisher_lock_marks_liveness() {
        let (publisher, key) = Segment::new("publock");
        let observer = Shared::open(&key, false, false).unwrap();
        assert!(!observer.publisher_alive(), "nobody holds the lock yet");
        publisher.0.lock_publisher().unwrap();
        assert!(publisher.0.publisher_alive(), "its own lock counts");
        assert!(observer.publisher_alive());
        let rival = Shared::open(&key, true, false).unwrap();
        let err = rival.lock_publisher().unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
        assert!(rival.publisher_alive());
        drop(publisher);
        assert!(
            !observer.publisher_alive(),
            "released when the handle closes"
        );
        rival.lock_publisher().unwrap();
        assert!(observer.publisher_alive());
    }

    #[test]
    fn record_locks() {
        let (publisher, key) = Segment::new("records");
        let a = Shared::open(&key, true, false).unwrap();
        let b = Shared::open(&key, true, false).unwrap();
        assert!(a.try_lock_record(0).unwrap());
        assert!(a.try_lock_record(62).unwrap());
        assert!(!b.try_lock_record(0).unwrap(), "another handle owns it");
        assert!(b.record_locked_by_other(0));
        assert!(publisher.0.record_locked_by_other(62));
        assert!(!a.record_locked_by_other(0), "its own lock");
        assert!(!b.record_locked_by_other(1));
        assert!(
            !publisher.0.publisher_alive(),
            "record locks are not the publisher's"
        );
        a.unlock_record(0);
        assert!(!b.record_locked_by_other(0));
        assert!(b.try_lock_record(0).unwrap());
        let bad = b.try_lock_record(63).unwrap_err();
        assert_eq!(bad.code(), ErrorCode::InvalidArgument);
        assert!(b.record_locked_by_other(63), "unknown counts as alive");
        drop(a);
        assert!(
            !b.record_locked_by_other(62),
            "released when the handle closes"
        );
    }

    #[test]
    fn check_intact_notices_truncation_and_resizing() {
        let (publisher, key) = Segment::new("intact");
        let sub = Shared::open(&key, true, false).unwrap();
        let monitor = Shared::open(&key, false, false).unwrap();
        sub.check_intact().unwrap();
        publisher.0.check_intact().unwrap();
        let len = sub.info.header.segment_len;
        let file = File::options()
            .write(true)
            .open(segment_path(&key))
            .unwrap();

        file.set_len(len + 4096).unwrap();
        let err = sub.check_intact().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Corrupt);
        assert!(err.message().contains("truncated or resized"), "{err}");
        file.set_len(len).unwrap();
        sub.check_intact().unwrap();

        file.set_len(0).unwrap();
        assert_eq!(sub.check_intact().unwrap_err().code(), ErrorCode::Corrupt);
        assert!(!sub.map.lost());
        // Touch the vanished pages: the guard swaps in zero pages, and the
        // loss stays reported even once the size is restored.
        let ctl = sub.ring().control();
        assert_eq!(ctl.notify.load(Ordering::Relaxed), 0);
        // SAFETY: the first byte of slot data lies in the mapping.
        assert_eq!(unsafe { sub.backend_area().0.read_volatile() }, 0);
        assert!(sub.map.lost());
        file.set_len(len).unwrap();
        let err = sub.check_intact().unwrap_err();
        assert!(err.message().contains("faulted"), "{err}");
        // Mappings not touched since the truncation are only caught by size.
        monitor.check_intact().unwrap();
        assert!(!monitor.map.lost());
    }

    #[test]
    fn no_room_messages() {
        let layout = FrameLayout::new(PixelFormat::Nv12, 1920, 1080, 64).unwrap();
        let who = Identity::default();
        let host =
            SegmentHeader::plan(&layout, &RingParams::default(), &Backend::HOST, &who).unwrap();
        let tmp = Path::new("/dev/shm/.cuframes.cam0.1.2.tmp");
        let enospc = "fallocate: No space left on device (os error 28)";
        let err = no_room(&host, tmp, None, false, enospc);
        assert_eq!(err.code(), ErrorCode::Capacity);
        let msg = err.message();
        // 1080p NV12: 3110400 bytes a frame, 3112960 a slot (page rounded).
        for part in [
            "no room for the segment in /dev/shm: it needs 24907776 bytes (23.8 MiB) = 8 slots of 3112960 bytes + 4096 bytes of tables",
            "free space unknown",
            "the default 64 MiB holds 21 slots of this frame size",
            "fewer or smaller slots",
            "CUFRAMES_SHM_DIR",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        // A GPU stream's segment holds no slots: no slot arithmetic.
        let gpu = Backend {
            memory: MemoryKind::CudaIpc,
            len: Some(8192),
            slot_stride: 3112960,
            ..Backend::HOST
        };
        let gpu = SegmentHeader::plan(&layout, &RingParams::default(), &gpu, &who).unwrap();
        let msg = no_room(&gpu, tmp, None, false, enospc).message().to_owned();
        assert!(msg.contains("it needs 12288 bytes (0.0 MiB);"), "{msg}");
        assert!(msg.contains("raise --shm-size;"), "{msg}");
        assert!(!msg.contains("slots"), "{msg}");
        // Out of memory (a cgroup limit) is not a --shm-size problem.
        let msg = no_room(&host, tmp, None, true, "fallocate: Cannot allocate memory")
            .message()
            .to_owned();
        assert!(
            msg.starts_with("out of memory while allocating the segment"),
            "{msg}"
        );
        assert!(msg.contains("memory limit"), "{msg}");
    }
}
