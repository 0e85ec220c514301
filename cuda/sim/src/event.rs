//! Events: a record counter and a completion counter, in shared memory for
//! interprocess events so other processes see both.

use crate::mem::memfd;
use crate::util::{self, report_violation, Rng};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

pub(crate) const MAGIC_EVENT: u64 = u64::from_le_bytes(*b"CFSIMEVB");
pub(crate) const EV_DISABLE_TIMING: u32 = 2;
pub(crate) const EV_INTERPROCESS: u32 = 4;
const SHARED_LEN: usize = 4096;

/// The state of one event, possibly shared with other processes.
#[repr(C)]
pub(crate) struct EvBlock {
    pub magic: u64,
    pub id: u64,
    pub owner_pid: u32,
    pub flags: u32,
    /// Records made so far (incremented when cuEventRecord is called).
    pub recorded: AtomicU64,
    /// Highest record number whose op has run.
    pub completed: AtomicU64,
    /// Set by the owner's cuEventDestroy.
    pub destroyed: AtomicU32,
    /// The process that made the latest record.
    pub recorder_pid: AtomicU32,
    pub recorder_start: AtomicU64,
    /// When the latest record completed (this process's clock).
    pub done_ns: AtomicU64,
}

pub(crate) struct EvMem {
    ptr: *mut EvBlock,
    fd: Option<OwnedFd>,
}

// SAFETY: the block is only accessed through atomics (and fields written
// before it is shared); the pointer stays valid until Drop.
unsafe impl Send for EvMem {}
// SAFETY: as above.
unsafe impl Sync for EvMem {}

impl EvMem {
    /// A new block: in a memfd when `shared`, else on the heap.
    pub fn new(flags: u32, shared: bool) -> std::io::Result<EvMem> {
        let block = EvBlock {
            magic: MAGIC_EVENT,
            id: util::random_u64(),
            owner_pid: util::pid(),
            flags,
            recorded: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            destroyed: AtomicU32::new(0),
            recorder_pid: AtomicU32::new(0),
            recorder_start: AtomicU64::new(0),
            done_ns: AtomicU64::new(0),
        };
        if !shared {
            return Ok(EvMem {
                ptr: Box::into_raw(Box::new(block)),
                fd: None,
            });
        }
        let fd = memfd(c"cuframes-sim-event", SHARED_LEN as u64)?;
        let ptr = map(fd.as_raw_fd())?;
        // SAFETY: a fresh mapping of SHARED_LEN bytes, not yet shared.
        unsafe { ptr.write(block) };
        Ok(EvMem { ptr, fd: Some(fd) })
    }

    /// Maps an exported event's memfd; `None` unless it is one with this id.
    pub fn open(fd: OwnedFd, id: u64) -> Option<EvMem> {
        // SAFETY: fstat into a zeroed struct on a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 || st.st_size as usize != SHARED_LEN
        {
            return None;
        }
        let ptr = map(fd.as_raw_fd()).ok()?;
        let m = EvMem { ptr, fd: Some(fd) };
        (m.block().magic == MAGIC_EVENT && m.block().id == id).then_some(m)
    }

    pub fn block(&self) -> &EvBlock {
        // SAFETY: valid for the life of `self` (see the type).
        unsafe { &*self.ptr }
    }

    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    pub fn done(&self, n: u64) -> bool {
        self.block().completed.load(Ordering::Acquire) >= n
    }
}

fn map(fd: RawFd) -> std::io::Result<*mut EvBlock> {
    // SAFETY: maps SHARED_LEN bytes of a file we hold open.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SHARED_LEN,
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

impl Drop for EvMem {
    fn drop(&mut self) {
        if self.fd.is_some() {
            // SAFETY: unmaps our mapping; nothing refers to it any more.
            unsafe { libc::munmap(self.ptr.cast(), SHARED_LEN) };
        } else {
            // SAFETY: made by Box::into_raw in `new`, freed once.
            drop(unsafe { Box::from_raw(self.ptr) });
        }
    }
}

/// An event handle of this process.
pub(crate) struct Event {
    pub ctx: usize,
    pub flags: u32,
    pub mem: std::sync::Arc<EvMem>,
    /// Opened from another process's handle.
    pub imported: bool,
}

/// Waits until record `n` of `mem` completed. A record made by a process
/// that died before it completed never completes: reported once, and the
/// wait goes on (a real GPU would hang too).
pub(crate) fn wait_event(mem: &EvMem, n: u64, rng: &mut Rng, call: &str) {
    let start = Instant::now();
    let mut last_check = Instant::now();
    let (mut dead_told, mut hang_told) = (false, false);
    while !mem.done(n) {
        if last_check.elapsed().as_millis() >= 10 {
            last_check = Instant::now();
            let b = mem.block();
            let p = b.recorder_pid.load(Ordering::Acquire);
            if !dead_told
                && p != util::pid()
                && util::pid_alive(p, b.recorder_start.load(Ordering::Acquire)) == Some(false)
                && !mem.done(n)
            {
                dead_told = true;
                report_violation(
                    call,
                    &format!("waits on event recorded by dead pid {p}; never completes"),
                );
            }
            if !hang_told && !dead_told && start.elapsed() > util::hang_after() {
                hang_told = true;
                report_violation(
                    call,
                    &format!(
                        "event wait not satisfied after {:?} (record {n}, completed {})",
                        start.elapsed(),
                        b.completed.load(Ordering::Acquire)
                    ),
                );
            }
        }
        util::poll_sleep(rng);
    }
}
