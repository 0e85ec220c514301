//! `cuframes gc` (alias `clean`): removes what dead publishers left in the
//! shm directory, and nothing else.
//!
//! - A **segment** `cuframes.KEY` goes only when its publisher is provably
//!   dead: nobody holds the publisher's lock on byte 63 of the segment file
//!   (what `stream_status(key).publisher_alive` reports) *and* `gc` can take
//!   the key's `flock` on `.cuframes.KEY.lock`. The kernel drops both locks
//!   when a process dies, however it dies, and keeps them for a process that
//!   is stopped or slow, so a live stream is never removed.
//! - The **lock file** `.cuframes.KEY.lock` of a key without a live
//!   publisher goes with it.
//! - A **temporary file** `.cuframes.KEY.PID.HEX.tmp` (a segment being
//!   made) goes when its creator's pid is gone, the key's `flock` is free (no
//!   creator anywhere, in any pid namespace, is making one) and nobody holds
//!   its byte 63.
//!
//! Races: every decision about a key and every unlink is made while `gc`
//! holds the key's `flock`. A publisher takes that lock before it creates
//! or renames a segment, so none can install a segment under a path `gc` is
//! about to unlink; one that starts in that instant is refused with
//! `AlreadyExists` instead of losing its stream.

use cuframes::{shm_dir, validate_key, Error, ErrorCode, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Arguments of `cuframes gc`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Only print what would be removed.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// Byte of a segment file whose open-file-description lock the live
/// publisher holds (protocol 2, `docs/protocol.md`, "Liveness").
const PUBLISHER_LOCK_BYTE: i64 = 63;

/// What the shm directory holds for one key.
#[derive(Default)]
struct KeyFiles {
    segment: bool,
    lock: bool,
    /// File names and creator pids of temporary segments.
    tmps: Vec<(String, u32)>,
}

/// A file name in the shm directory, as `gc` sees it.
enum Name {
    Segment(String),
    Lock(String),
    Tmp(String, u32),
}

/// Classifies a directory entry name (`None`: not ours).
fn classify(name: &str) -> Option<Name> {
    if let Some(key) = name.strip_prefix("cuframes.") {
        return validate_key(key).is_ok().then(|| Name::Segment(key.into()));
    }
    let rest = name.strip_prefix(".cuframes.")?;
    if let Some(key) = rest.strip_suffix(".lock") {
        return validate_key(key).is_ok().then(|| Name::Lock(key.into()));
    }
    // `.cuframes.KEY.PID.HEX.tmp`; keys may hold dots, so split from the end.
    let mut parts = rest.strip_suffix(".tmp")?.rsplitn(3, '.');
    let hex = parts.next()?;
    let pid = parts.next()?.parse::<u32>().ok()?;
    let key = parts.next()?;
    let ok =
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) && validate_key(key).is_ok();
    ok.then(|| Name::Tmp(key.into(), pid))
}

/// Removes stale segments, lock files and temporary files; see the module
/// documentation for the rules. Prints one line per file removed (or, with
/// `--dry-run`, that would be) or kept for a reason worth telling. A file
/// that cannot be removed is reported and the rest still cleaned; the
/// first such error is returned at the end.
pub fn run(args: &Args) -> Result<()> {
    let dir = shm_dir();
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
    let mut keys: BTreeMap<String, KeyFiles> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(kind) = classify(&name) else {
            continue;
        };
        // Only plain files: a symlink or directory with our name is not
        // something a publisher made, and is left alone.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            println!("skipped {}: not a regular file", dir.join(&name).display());
            continue;
        }
        match kind {
            Name::Segment(k) => keys.entry(k).or_default().segment = true,
            Name::Lock(k) => keys.entry(k).or_default().lock = true,
            Name::Tmp(k, pid) => keys.entry(k).or_default().tmps.push((name, pid)),
        }
    }
    let mut gc = Gc {
        dir: &dir,
        dry_run: args.dry_run,
        removed: 0,
        first_error: None,
    };
    for (key, files) in &keys {
        gc.key(key, files);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    match gc.removed {
        0 => println!("nothing to remove in {}", dir.display()),
        n => println!("{verb} {n} file(s) in {}", dir.display()),
    }
    gc.first_error.map_or(Ok(()), Err)
}

struct Gc<'a> {
    dir: &'a Path,
    dry_run: bool,
    removed: usize,
    first_error: Option<Error>,
}

impl Gc<'_> {
    fn key(&mut self, key: &str, files: &KeyFiles) {
        let lock_path = self.dir.join(format!(".cuframes.{key}.lock"));
        let lock = match KeyLock::take(&lock_path, self.dry_run) {
            Ok(Taken::Locked(lock)) => lock,
            Ok(Taken::Held) => {
                if files.segment || !files.tmps.is_empty() {
                    println!("kept {key}: a publisher holds {}", lock_path.display());
                }
                return;
            }
            Ok(Taken::Denied) => {
                println!(
                    "skipped {key}: no permission to open {}",
                    lock_path.display()
                );
                return;
            }
            Err(e) => return self.fail(e),
        };
        let segment = self.dir.join(format!("cuframes.{key}"));
        let mut publisher_alive = false;
        if files.segment {
            match publisher_of(&segment) {
                Ok((true, pid)) => {
                    publisher_alive = true;
                    println!(
                        "kept {}: its publisher{} is alive",
                        segment.display(),
                        pid_text(pid)
                    );
                }
                Ok((false, pid)) => self.remove(
                    &segment,
                    &format!("stale segment: its publisher{} is dead", pid_text(pid)),
                ),
                // Vanished meanwhile: nothing to do.
                Err(e) if e.code() == ErrorCode::NotFound => {}
                Err(e) if e.code() == ErrorCode::Permission => {
                    publisher_alive = true;
                    println!("skipped {}: no permission to open it", segment.display());
                }
                Err(e) => {
                    publisher_alive = true; // undecided counts as alive
                    self.fail(e);
                }
            }
        }
        for (name, pid) in &files.tmps {
            let path = self.dir.join(name);
            if cuframes::process_start_time(*pid).is_some() {
                println!(
                    "kept {}: its creator (pid {pid}) is running",
                    path.display()
                );
                continue;
            }
            match publisher_of(&path) {
                Ok((false, _)) => self.remove(
                    &path,
                    &format!("temporary file of a dead creator (pid {pid})"),
                ),
                Ok((true, _)) => println!("kept {}: locked by a live process", path.display()),
                Err(e) if e.code() == ErrorCode::NotFound => {}
                Err(e) if e.code() == ErrorCode::Permission => {
                    println!("skipped {}: no permission to open it", path.display());
                }
                Err(e) => self.fail(e),
            }
        }
        // The lock file goes last, still locked, and only without a live
        // publisher (one whose lock file was lost keeps the new one). A file
        // this run created only to lock the key goes in any case.
        let why = "lock file of a key with no live publisher";
        if lock.created {
            let _ = lock.unlink();
        } else if publisher_alive || !files.lock {
            // kept, or nothing to remove
        } else if self.dry_run {
            self.removed += 1;
            println!("would remove {} ({why})", lock_path.display());
        } else {
            match lock.unlink() {
                Ok(true) => {
                    self.removed += 1;
                    println!("removed {} ({why})", lock_path.display());
                }
                Ok(false) => {}
                Err(e) => self.fail(Error::io(format!("remove {}", lock_path.display()), e)),
            }
        }
    }

    /// Unlinks `path` (or says it would), counting it.
    fn remove(&mut self, path: &Path, why: &str) {
        if self.dry_run {
            self.removed += 1;
            println!("would remove {} ({why})", path.display());
            return;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                self.removed += 1;
                println!("removed {} ({why})", path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => self.fail(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    fn fail(&mut self, e: Error) {
        eprintln!("failed: {}", e.message());
        self.first_error.get_or_insert(e);
    }
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(String::new, |p| format!(" (pid {p})"))
}

/// The key's publisher lock (`flock` on `.cuframes.KEY.lock`), held by this
/// run until dropped.
struct KeyLock {
    /// `None` only in a dry run for a key without a lock file.
    file: Option<File>,
    path: PathBuf,
    /// This run created the file (there was none): it is removed again.
    created: bool,
}

/// Outcome of [`KeyLock::take`].
enum Taken {
    /// The key is ours until the lock is dropped.
    Locked(KeyLock),
    /// Another process holds it: a live publisher, one being made, or
    /// another `gc`.
    Held,
    /// Not ours to look at (permission denied).
    Denied,
}

impl KeyLock {
    /// Takes the lock without waiting. Without a lock file, one is created
    /// (and removed again at the end) unless this is a dry run, which then
    /// judges the key by its segment's lock alone.
    fn take(path: &Path, dry_run: bool) -> Result<Taken> {
        let open = |create_new: bool| {
            let mut o = File::options();
            o.read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
            if create_new {
                o.write(true).create_new(true).mode(0o600);
            }
            o.open(path)
        };
        use std::io::ErrorKind::{AlreadyExists, NotFound, PermissionDenied};
        let (file, created) = match open(false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == NotFound && dry_run => {
                return Ok(Taken::Locked(Self {
                    file: None,
                    path: path.to_owned(),
                    created: false,
                }))
            }
            Err(e) if e.kind() == NotFound => match open(true) {
                Ok(f) => (f, true),
                // A publisher made it just now: it holds the key.
                Err(e) if e.kind() == AlreadyExists => return Ok(Taken::Held),
                Err(e) if e.kind() == PermissionDenied => return Ok(Taken::Denied),
                Err(e) => return Err(Error::io(format!("create {}", path.display()), e)),
            },
            Err(e) if e.kind() == PermissionDenied => return Ok(Taken::Denied),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        // SAFETY: flock(2) on a descriptor we own and keep open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(Taken::Held);
            }
            return Err(Error::io(format!("lock {}", path.display()), e));
        }
        let lock = Self {
            file: Some(file),
            path: path.to_owned(),
            created,
        };
        // Another `gc` may have removed the file between our open and our
        // lock: then what we hold is not the key's lock any more.
        if !lock.is_current() {
            return Ok(Taken::Held);
        }
        Ok(Taken::Locked(lock))
    }

    /// Whether the path still names the file we locked.
    fn is_current(&self) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        match (file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }

    /// Unlinks the lock file while still holding its lock (the lock goes
    /// when `self` is dropped, after the unlink). True if removed.
    fn unlink(self) -> std::io::Result<bool> {
        if !self.is_current() {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether some process holds the publisher lock (byte 63) of the segment
/// or temporary file at `path`, and the pid its header names if it has
/// one. Works on any file, valid segment or not. Errors (other than
/// `NotFound`) leave the file alone.
fn publisher_of(path: &Path) -> Result<(bool, Option<u32>)> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: an all-zero `flock` is a valid value (and OFD locks need
    // l_pid = 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = PUBLISHER_LOCK_BYTE;
    fl.l_len = 1;
    // SAFETY: F_OFD_GETLK on a descriptor we keep open, with a live
    // `flock` the kernel fills in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::new(
            ErrorCode::Io,
            format!("check the publisher lock of {}: {e}", path.display()),
        ));
    }
    let held = fl.l_type != libc::F_UNLCK as libc::c_short;
    let mut header = [0u8; 36];
    let pid = file
        .read_exact_at(&mut header, 0)
        .ok()
        .filter(|()| &header[..8] == b"CUFRAMES")
        .map(|()| u32::from_le_bytes([header[32], header[33], header[34], header[35]]));
    Ok((held, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(matches!(classify("cuframes.cam0"), Some(Name::Segment(k)) if k == "cam0"));
        assert!(matches!(classify("cuframes.a.lock"), Some(Name::Segment(k)) if k == "a.lock"));
        assert!(matches!(classify(".cuframes.cam0.lock"), Some(Name::Lock(k)) if k == "cam0"));
        assert!(
            matches!(classify(".cuframes.a.b.1234.9f0a.tmp"), Some(Name::Tmp(k, 1234)) if k == "a.b")
        );
        for other in [
            "cuframes-test-1",
            "cuframes.",
            "cuframes.../x",
            ".cuframes..lock",
            ".cuframes.k.x.9f.tmp",
            ".cuframes.k.12.zz.tmp",
            ".cuframes.1.2.tmp",
            "other",
        ] {
            assert!(classify(other).is_none(), "{other}");
        }
    }
}
