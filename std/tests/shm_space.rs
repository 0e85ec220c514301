//! Space in the shm file system: a segment that does not fit fails at
//! creation with a typed `Capacity` error that says how big the ring is and
//! how much room there is, instead of succeeding and raising `SIGBUS` (now:
//! zero pages and `Corrupt`) at the first write past the free space.
//!
//! The small file systems are real mounts (a 1 MiB tmpfs; ramfs, which has no
//! `fallocate`), made by a child process (this test binary again, running
//! only the one test) in a private mount namespace: as root a plain one,
//! otherwise inside a new user namespace. Where neither is permitted the
//! tests print why and pass.

use cuframes::*;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Set in the child: the file system type to mount at `CUFRAMES_SHM_DIR`.
const CHILD_FS: &str = "CUFRAMES_SHM_SPACE_FS";
/// Printed by a child that could not mount, before the reason.
const SKIPPED: &str = "shm-space-skipped:";

/// Runs test `name` again in a child process with a private mount namespace
/// in which `fstype` (with `options`) is mounted at a fresh directory that
/// `CUFRAMES_SHM_DIR` names. Returns `false` where this process is the
/// child (the caller then runs the test body), `true` once the child has
/// passed or skipped.
fn run_in_private_mount(name: &str, fstype: &str, options: &str) -> bool {
    if std::env::var_os(CHILD_FS).is_some() {
        mount_here();
        return false;
    }
    let dir =
        std::env::temp_dir().join(format!("cuframes-shm-space-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_FS, format!("{fstype}:{options}"))
        .env("CUFRAMES_SHM_DIR", &dir);
    private_mount_namespace(&mut cmd);
    let out = cmd.output();
    let _ = std::fs::remove_dir(&dir);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            println!("skipped: cannot make a private mount namespace ({e}); run as root or allow unprivileged user namespaces");
            return true;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(out.status.success(), "child test failed: {}", out.status);
    if let Some(why) = stdout.lines().find_map(|l| l.strip_prefix(SKIPPED)) {
        println!("skipped:{why}");
    } else {
        assert!(stdout.contains("1 passed"), "the child ran no test");
    }
    true
}

/// Has `cmd` start in a new mount namespace: a plain one as root, else (or
/// where root may not) inside a new user namespace mapping our ids to root,
/// which may mount tmpfs and ramfs there. The mounts vanish with the child's
/// namespace.
fn private_mount_namespace(cmd: &mut Command) {
    let root = rustix::process::geteuid().is_root();
    let uid_map = format!("0 {} 1", rustix::process::geteuid().as_raw());
    let gid_map = format!("0 {} 1", rustix::process::getegid().as_raw());
    // SAFETY: between fork and exec the closure makes only raw syscalls
    // (unshare, open, write, close) on data prepared before the fork; it
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Root without CAP_SYS_ADMIN (a container) may still make a
            // user namespace.
            if root && libc::unshare(libc::CLONE_NEWNS) == 0 {
                return Ok(());
            }
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            write_proc(c"/proc/self/setgroups", b"deny")?;
            write_proc(c"/proc/self/uid_map", uid_map.as_bytes())?;
            write_proc(c"/proc/self/gid_map", gid_map.as_bytes())
        });
    }
}

/// `open` + `write` + `close` without allocating (for `pre_exec`).
fn write_proc(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path; a plain write of a borrowed buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// In the child: keeps our mounts from propagating out, then mounts the
/// requested file system at `CUFRAMES_SHM_DIR`. Exits the process (status 0,
/// with the reason on stdout) where that is not permitted.
fn mount_here() {
    let spec = std::env::var(CHILD_FS).unwrap();
    let (fstype, options) = spec.split_once(':').unwrap();
    let dir = shm_dir();
    let c = |s: &str| CString::new(s).unwrap();
    let skip = |what: &str| -> ! {
        println!(
            "{SKIPPED} {what} {fstype} at {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        std::process::exit(0)
    };
    // SAFETY: plain mount(2) calls with NUL-terminated strings.
    unsafe {
        if libc::mount(
            c("none").as_ptr(),
            c("/").as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            skip("cannot make mounts private before mounting");
        }
        let path = c(dir.to_str().unwrap());
        let data = c(options);
        if libc::mount(
            c(fstype).as_ptr(),
            path.as_ptr(),
            c(fstype).as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        ) != 0
        {
            skip("cannot mount");
        }
    }
}

/// Available bytes of the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let v = rustix::fs::statvfs(dir).unwrap();
    v.f_bavail * v.f_frsize
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A Gray8 layout whose slot is exactly `kib` KiB (a multiple of 4).
fn layout_kib(kib: u32) -> FrameLayout {
    FrameLayout::new(PixelFormat::Gray8, 1024, kib, 64).unwrap()
}

fn options(slot_count: u32) -> PublisherOptions {
    PublisherOptions {
        slot_count,
        block_timeout: Duration::from_millis(100),
        ..Default::default()
    }
}

/// The error of a creation that must fail.
fn create_fails(key: &str, layout: FrameLayout, options: PublisherOptions, why: &str) -> Error {
    match Publisher::create(key, layout, options) {
        Ok(_) => panic!("{key} was created: expected {why}"),
        Err(e) => e,
    }
}

/// Publishes through every slot and reads the newest frame back.
fn round_trip(publisher: &mut Publisher, key: &str, slots: u32) {
    let mut sub = Subscriber::connect(key, "check", Mode::NewestOnly, Default::default()).unwrap();
    for i in 0..slots as u8 + 2 {
        let mut lease = publisher.loan().unwrap();
        lease.plane_mut(0).fill(i);
        lease.commit(i64::from(i)).unwrap();
    }
    let frame = sub.next_frame(Duration::from_secs(1)).unwrap();
    let last = slots as u8 + 1;
    assert!(frame.plane(0).iter().all(|&b| b == last));
}

/// In a 1 MiB tmpfs: a ring of ~4 MiB fails at creation with `Capacity` and
/// a message that sizes it, leaving no file and no used space behind; rings
/// that fit work through every slot, and a second one that no longer fits
/// fails the same way.
#[test]
fn segment_larger_than_tmpfs_fails_at_creation() {
    if run_in_private_mount(
        "segment_larger_than_tmpfs_fails_at_creation",
        "tmpfs",
        "size=1m",
    ) {
        return;
    }
    let dir = shm_dir();
    let before = free_bytes(&dir);
    assert_eq!(before, 1 << 20, "a fresh 1 MiB tmpfs");

    // 8 slots of 512 KiB + one page of tables: 4 MiB + 4 KiB.
    let err = create_fails(
        "big",
        layout_kib(512),
        options(8),
        "a 4 MiB ring in a 1 MiB tmpfs",
    );
    println!("{err}");
    assert_eq!(err.code(), ErrorCode::Capacity, "{err}");
    let msg = err.message();
    for part in [
        &format!("in {}:", dir.display()),
        "it needs 4198400 bytes (4.0 MiB) = 8 slots of 524288 bytes + 4096 bytes of tables",
        "1048576 bytes (1.0 MiB) free of 1048576 bytes (1.0 MiB)",
        "No space left on device",
        "--shm-size (the default 64 MiB holds 127 slots of this frame size",
        "fewer or smaller slots",
        "CUFRAMES_SHM_DIR",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // Only the key's lock file (empty, no blocks) is left; no temporary
    // segment, and every page the failed reservation took is back.
    assert_eq!(names(&dir), [".cuframes.big.lock"]);
    assert_eq!(free_bytes(&dir), before);

    // 4 slots of 128 KiB: 516 KiB, reserved at creation.
    let mut small = Publisher::create("small", layout_kib(128), options(4)).unwrap();
    let len = small.segment_info().header.segment_len;
    assert_eq!(len, 4 * 128 * 1024 + 4096);
    let meta = std::fs::metadata(dir.join("cuframes.small")).unwrap();
    assert!(meta.blocks() * 512 >= len, "pages allocated up front");
    assert_eq!(free_bytes(&dir), before - len);
    round_trip(&mut small, "small", 4);

    // The same ring again does not fit beside it.
    let err = create_fails(
        "second",
        layout_kib(128),
        options(4),
        "no room for a second 516 KiB ring",
    );
    assert_eq!(err.code(), ErrorCode::Capacity, "{err}");
    assert!(err.message().contains("it needs 528384 bytes"), "{err}");
    assert!(
        err.message().contains("520192 bytes (0.5 MiB) free"),
        "{err}"
    );
    // A creation that fails after the space is reserved (here the backend's
    // init; also a refused rename) removes its temporary file.
    let full = free_bytes(&dir);
    let err = match Publisher::create_with_backend(
        "init-fails",
        layout_kib(64),
        options(3),
        cuframes::core::Backend::HOST,
        |_| Err(Error::new(ErrorCode::Cuda, "no device")),
    ) {
        Ok(_) => panic!("init failed, yet the publisher was created"),
        Err(e) => e,
    };
    assert_eq!(err.code(), ErrorCode::Cuda);
    assert!(
        !names(&dir).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names(&dir)
    );
    assert_eq!(free_bytes(&dir), full);
    // A smaller one does.
    let mut tiny = Publisher::create("tiny", layout_kib(64), options(3)).unwrap();
    round_trip(&mut tiny, "tiny", 3);
    drop(tiny);
    drop(small);
    assert_eq!(
        free_bytes(&dir),
        before,
        "dropped publishers free their segments"
    );
    let left = names(&dir);
    assert!(left.iter().all(|n| n.ends_with(".lock")), "{left:?}");
}

/// A publisher restarted while a subscriber still maps the old segment
/// needs room for both: the old file's pages stay allocated until its last
/// mapping goes, even once it is unlinked.
#[test]
fn restart_needs_room_while_old_segment_is_mapped() {
    if run_in_private_mount(
        "restart_needs_room_while_old_segment_is_mapped",
        "tmpfs",
        "size=1m",
    ) {
        return;
    }
    let dir = shm_dir();
    let before = free_bytes(&dir);
    let first = Publisher::create("cam", layout_kib(128), options(4)).unwrap();
    let sub = Subscriber::connect("cam", "viewer", Mode::NewestOnly, Default::default()).unwrap();
    drop(first); // unlinks the segment and its lock file; `sub` still maps it
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    let err = create_fails(
        "cam",
        layout_kib(128),
        options(4),
        "the old segment's pages are still in use",
    );
    assert_eq!(err.code(), ErrorCode::Capacity, "{err}");
    drop(sub);
    assert_eq!(free_bytes(&dir), before);
    let mut second = Publisher::create("cam", layout_kib(128), options(4)).unwrap();
    round_trip(&mut second, "cam", 4);
}

/// ramfs has no `fallocate` (`EOPNOTSUPP`): creation falls back to sizing
/// the file and works.
#[test]
fn no_fallocate_falls_back_to_set_len() {
    if run_in_private_mount("no_fallocate_falls_back_to_set_len", "ramfs", "mode=0755") {
        return;
    }
    let dir = shm_dir();
    // The premise: this file system refuses fallocate.
    let probe = dir.join("probe");
    let file = std::fs::File::create(&probe).unwrap();
    match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 4096) {
        Err(rustix::io::Errno::OPNOTSUPP) => {}
        other => println!("note: fallocate on ramfs gave {other:?}, not EOPNOTSUPP"),
    }
    drop(file);
    std::fs::remove_file(&probe).unwrap();

    let mut publisher = Publisher::create("ram", layout_kib(128), options(4)).unwrap();
    let len = publisher.segment_info().header.segment_len;
    assert_eq!(
        std::fs::metadata(dir.join("cuframes.ram")).unwrap().len(),
        len
    );
    round_trip(&mut publisher, "ram", 4);
    drop(publisher);
    // A publisher that closes takes its segment and lock file with it.
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
}

/// Without any mount: the segment's pages are allocated at creation (on the
/// tmpfs at /dev/shm), before any frame is written.
#[test]
fn segment_pages_are_reserved_at_creation() {
    let base = PathBuf::from("/dev/shm");
    let is_tmpfs = rustix::fs::statfs(&base).is_ok_and(|s| s.f_type == libc::TMPFS_MAGIC as _);
    if !is_tmpfs {
        println!("skipped: /dev/shm is not a tmpfs here");
        return;
    }
    /// Removed on drop, after the publisher (declared later) is gone.
    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Dir(base.join(format!("cuframes-space-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir.0);
    let publisher = Publisher::create("reserved", layout_kib(1024), options(8)).unwrap();
    let len = publisher.segment_info().header.segment_len;
    let meta = std::fs::metadata(dir.0.join("cuframes.reserved")).unwrap();
    assert_eq!(meta.len(), len);
    assert!(
        meta.blocks() * 512 >= len,
        "a sparse segment: {} of {len} bytes allocated",
        meta.blocks() * 512
    );
}
