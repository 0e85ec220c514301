//! Open-file-description byte-range locks (Linux `F_OFD_SETLK` /
//! `F_OFD_GETLK`), one byte each, on a segment file: the liveness signal
//! of the publisher and of every subscriber record.
//!
//! Why OFD locks rather than pids, heartbeats or classic POSIX locks:
//!
//! - The kernel drops the lock when the last descriptor of the open file
//!   description closes, and a process's descriptors close however it dies
//!   (`kill -9`, OOM killer, a crash in C code): no stale claim survives
//!   its holder, and nobody has to time anything out.
//! - The lock lives on the inode, not in a pid, so it works across pid
//!   namespaces (containers sharing `/dev/shm`) and cannot be fooled by a
//!   recycled pid.
//! - Each `open()` makes its own open file description, so two handles in
//!   one process exclude each other. Classic POSIX record locks
//!   (`F_SETLK`) belong to the process instead: a second handle in the same
//!   process would silently share the first one's lock, and closing *any*
//!   descriptor of the file would drop all of them.
//!
//! Caveat: a descriptor duplicated by `dup` or inherited across `fork`
//! (without `exec`; our files are `O_CLOEXEC`) shares the open file
//! description, so a forked child that lives on keeps its parent's locks.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// A one-byte `struct flock` at `byte`.
fn one_byte(kind: libc::c_int, byte: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(byte)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "lock offset out of range"))?;
    // SAFETY: `flock` is a plain C struct of integers, for which all-zero
    // bytes are a valid value; in particular `l_pid` stays 0, as OFD locks
    // require (the kernel answers EINVAL otherwise).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    Ok(fl)
}

/// `fcntl(fd, cmd, fl)` for the OFD lock commands.
fn fcntl_lock(fd: RawFd, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fd` is a descriptor the caller keeps open for the call (it
    // comes from a borrowed `File`), and `fl` points to a live, initialised
    // `flock` that the kernel reads and (for F_OFD_GETLK) writes.
    if unsafe { libc::fcntl(fd, cmd, fl as *mut libc::flock) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes an exclusive lock on `byte` through `fd` without waiting.
fn try_lock_fd(fd: RawFd, byte: u64) -> io::Result<bool> {
    let mut fl = one_byte(libc::F_WRLCK, byte)?;
    match fcntl_lock(fd, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an exclusive (write) lock on `byte` of `file`, without waiting:
/// `Ok(false)` if another open file description holds a lock on it.
/// Taking a lock this description already holds succeeds. `file` must be
/// open for writing.
pub(crate) fn try_lock(file: &File, byte: u64) -> io::Result<bool> {
    try_lock_fd(file.as_raw_fd(), byte)
}

/// Releases this description's lock on `byte` (a no-op if it holds none).
pub(crate) fn unlock(file: &File, byte: u64) -> io::Result<()> {
    let mut fl = one_byte(libc::F_UNLCK, byte)?;
    fcntl_lock(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl)
}

/// Whether another open file description (in this or any process) holds a
/// lock on `byte`. A lock held through `file`'s own description does not
/// count: the kernel reports only conflicting locks. Works on a read-only
/// descriptor.
pub(crate) fn locked_by_other(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = one_byte(libc::F_WRLCK, byte)?;
    fcntl_lock(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    /// A fresh, empty temporary file, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "cuframes-ofd-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            File::create(&path).unwrap();
            Self(path)
        }
        fn open(&self, write: bool) -> File {
            File::options()
                .read(true)
                .write(write)
                .open(&self.0)
                .unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn two_opens_in_one_process_exclude_each_other() {
        let tmp = TempFile::new("two");
        let (a, b) = (tmp.open(true), tmp.open(true));
        let reader = tmp.open(false);
        assert!(try_lock(&a, 3).unwrap());
        assert!(
            try_lock(&a, 3).unwrap(),
            "re-locking through the same description"
        );
        assert!(!try_lock(&b, 3).unwrap(), "another description is refused");
        assert!(try_lock(&b, 4).unwrap(), "other bytes are independent");
        assert!(locked_by_other(&b, 3).unwrap());
        assert!(
            locked_by_other(&reader, 3).unwrap(),
            "GETLK on a read-only fd"
        );
        assert!(
            !locked_by_other(&a, 3).unwrap(),
            "its own lock does not conflict"
        );
        assert!(!locked_by_other(&a, 5).unwrap());
        // Closing an unrelated descriptor of the file drops nothing (unlike
        // classic POSIX locks).
        drop(reader);
        assert!(locked_by_other(&b, 3).unwrap());
    }

    #[test]
    fn unlock_frees_and_close_frees() {
        let tmp = TempFile::new("unlock");
        let (a, b) = (tmp.open(true), tmp.open(true));
        assert!(try_lock(&a, 0).unwrap());
        assert!(try_lock(&a, 63).unwrap());
        unlock(&a, 0).unwrap();
        unlock(&a, 0).unwrap();
        assert!(!locked_by_other(&b, 0).unwrap());
        assert!(try_lock(&b, 0).unwrap());
        assert!(locked_by_other(&b, 63).unwrap());
        drop(a);
        assert!(!locked_by_other(&b, 63).unwrap(), "closing releases");
        assert!(try_lock(&b, 63).unwrap());
    }

    #[test]
    fn read_only_descriptor_cannot_lock() {
        let tmp = TempFile::new("ro");
        let ro = tmp.open(false);
        assert_eq!(
            try_lock(&ro, 1).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn lock_of_killed_process_is_released() {
        let tmp = TempFile::new("kill");
        let mine = tmp.open(true);
        let path = CString::new(tmp.0.as_os_str().as_bytes()).unwrap();
        let mut pipe = [0 as libc::c_int; 2];
        // SAFETY: `pipe` has room for the two descriptors pipe2(2) writes.
        // O_CLOEXEC: children other tests spawn must not keep it open.
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: the child runs only async-signal-safe calls (open, fcntl,
        // write, pause, _exit) on memory prepared before the fork, so the
        // other test threads' locks (malloc and the like) cannot hang it.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", io::Error::last_os_error());
        if child == 0 {
            // SAFETY: (child) `path` is a NUL-terminated string; a fresh
            // open gives the child its own open file description.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
            let ok = fd >= 0 && matches!(try_lock_fd(fd, 7), Ok(true));
            let byte = [u8::from(ok)];
            // SAFETY: (child) writes one byte from a live buffer to the pipe,
            // then waits for SIGKILL; _exit never returns.
            unsafe {
                libc::write(pipe[1], byte.as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        let mut byte = [0u8];
        // SAFETY: closes our copy of the write end (so a child that dies
        // without writing ends the read), then reads one byte into a live
        // buffer.
        let n = unsafe {
            libc::close(pipe[1]);
            libc::read(pipe[0], byte.as_mut_ptr().cast(), 1)
        };
        let locked = (n == 1 && byte[0] == 1).then(|| {
            (
                locked_by_other(&mine, 7).unwrap(),
                try_lock(&mine, 7).unwrap(),
            )
        });
        // SAFETY: `child` is our own child, not yet reaped; kill and reap it
        // whatever the checks above found, so no process is left behind.
        let status = unsafe {
            libc::kill(child, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
            libc::close(pipe[0]);
            status
        };
        assert_eq!(locked, Some((true, false)), "the live child holds the lock");
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        assert!(
            !locked_by_other(&mine, 7).unwrap(),
            "released by the kernel"
        );
        assert!(try_lock(&mine, 7).unwrap());
    }
}
