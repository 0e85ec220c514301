//! Segment files: creation (publisher), opening with checks (everyone
//! else), the memory mapping, and the [`Shared`] ring handle with futex
//! wake-ups.

use crate::key::segment_path;
use crate::sys;
use crate::{Error, ErrorCode, Result};
use cuframes_core::{Ring, RingRef, SegmentHeader, SegmentInfo, Wake};
use rustix::mm::{MapFlags, ProtFlags};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use zerocopy::IntoBytes;

/// Largest segment accepted on open (a hostile size cannot make us map
/// terabytes).
const MAX_SEGMENT: u64 = 1 << 36;

/// A shared mapping of a whole segment file.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access to its live
// regions goes through atomics, and slot data is handed out only under a
// lease that grants exclusive (writer) or shared read-only (readers) access.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` exposes nothing but the base pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(file: &File, len: u64, writable: bool) -> Result<Self> {
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
        Ok(Self {
            ptr,
            len: len as usize,
        })
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
    pub(crate) path: PathBuf,
    /// (device, inode) of the file, to notice a replacement at `path`.
    pub(crate) file_id: (u64, u64),
}

impl Shared {
    fn new(map: Mapping, info: SegmentInfo, path: PathBuf, file_id: (u64, u64)) -> Self {
        // SAFETY: `map` is a live mapping of `info.header.segment_len` bytes
        // (page aligned) whose header validated into `info`; it is moved into
        // the same struct as the Ring and outlives it (field order); we never
        // form `&mut` or byte slices over the live regions.
        let ring = unsafe { Ring::from_segment(map.base(), &info) };
        Self {
            ring,
            info,
            map,
            path,
            file_id,
        }
    }

    /// Opens and validates an existing segment.
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
        Ok(Self::new(map, info, path, (meta.dev(), meta.ino())))
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
            .and_then(|_| file.set_len(header.segment_len))
            .map_err(|e| cleanup(Error::io("size segment", e)))?;
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
        Ok(Self::new(map, info, tmp, (meta.dev(), meta.ino())))
    }

    /// Atomically puts a created segment in place at the key's path,
    /// replacing any previous one (whose mappings stay valid for the
    /// subscribers still holding them).
    pub(crate) fn install(&mut self, key: &str) -> Result<()> {
        let path = segment_path(key);
        std::fs::rename(&self.path, &path).map_err(|e| Error::io("install segment", e))?;
        self.path = path;
        Ok(())
    }

    /// Whether the publisher that made this segment still lives (pid and
    /// start time, or its heartbeat across pid namespaces).
    pub(crate) fn publisher_alive(&self) -> bool {
        let h = &self.info.header;
        let beat = self
            .ring
            .control()
            .heartbeat_ns
            .load(std::sync::atomic::Ordering::Relaxed);
        sys::holder_alive(
            h.publisher_pid,
            h.publisher_start_time,
            h.publisher_pid_ns,
            beat,
        )
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
        let (ptr, len) = self.backend_area();
        // SAFETY: the segment file is still under its private temporary
        // name, so no other process maps it; `&mut self` excludes other users
        // in this process; validation proved the area lies in the mapping.
        init(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
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
