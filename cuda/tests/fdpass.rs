//! The descriptor hand-off over real unix sockets, with a memfd standing in
//! for the exported VMM allocation: same file on both ends, credential
//! checks on both ends, greeting validation.

use cuframes::ErrorCode;
use cuframes_cuda::fdpass::*;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn memfd(content: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create("cuframes-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut f = std::fs::File::from(fd);
    f.write_all(content).unwrap();
    f.into()
}

fn id_of(fd: &OwnedFd) -> (u64, u64) {
    let f = std::fs::File::from(fd.try_clone().unwrap());
    let m = f.metadata().unwrap();
    (m.dev(), m.ino())
}

fn read_all(fd: OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(fd);
    f.rewind().unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn me() -> PeerPolicy {
    PeerPolicy::current(false)
}

fn sock_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cf-{tag}-{}.sock", std::process::id()))
}

#[test]
fn peer_check_with_fake_credentials() {
    let policy = PeerPolicy {
        uid: 1000,
        gid: None,
    };
    let ok = PeerCred {
        pid: 10,
        uid: 1000,
        gid: 1000,
    };
    assert!(check_peer(&ok, &policy).is_ok());
    let stranger = PeerCred {
        pid: 11,
        uid: 1001,
        gid: 1000,
    };
    let e = check_peer(&stranger, &policy).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Permission);
    assert!(e.message().contains("uid 1001"), "{e}");
    let root = PeerCred {
        pid: 1,
        uid: 0,
        gid: 0,
    };
    assert_eq!(
        check_peer(&root, &policy).unwrap_err().code(),
        ErrorCode::Permission
    );
    let group = PeerPolicy {
        uid: 1000,
        gid: Some(44),
    };
    let member = PeerCred {
        pid: 12,
        uid: 1002,
        gid: 44,
    };
    assert!(check_peer(&member, &group).is_ok());
    assert!(check_peer(&member, &policy).is_err());
}

#[test]
fn real_peer_credentials() {
    let (a, b) = UnixStream::pair().unwrap();
    let c = peer_cred(&a).unwrap();
    assert_eq!(c.pid, std::process::id());
    assert_eq!(c.uid, rustix::process::geteuid().as_raw());
    assert!(check_peer(&c, &me()).is_ok());
    assert!(check_peer(&peer_cred(&b).unwrap(), &me()).is_ok());
}

#[test]
fn descriptor_crosses_a_socket_between_threads() {
    let (a, b) = UnixStream::pair().unwrap();
    let fd = memfd(b"frame memory");
    let want = id_of(&fd);
    let t = std::thread::spawn(move || {
        send_fd(&a, b"hello", fd.as_fd()).unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, got) = recv_fd(&b, &mut buf).unwrap();
    t.join().unwrap();
    assert_eq!(&buf[..n], b"hello");
    let got = got.expect("a descriptor");
    assert_eq!(id_of(&got), want, "the same open file");
    assert_eq!(read_all(got), b"frame memory");
    // A message without a descriptor.
    let (a, b) = UnixStream::pair().unwrap();
    send_plain(&a, b"x").unwrap();
    let (n, got) = recv_fd(&b, &mut buf).unwrap();
    assert_eq!((n, got.is_none()), (1, true));
}

fn expect(epoch: u64, bytes: u64) -> Expect {
    Expect {
        epoch,
        alloc_bytes: bytes,
        pid: Some(std::process::id()),
        uid: Some(rustix::process::geteuid().as_raw()),
    }
}

#[test]
fn server_hands_the_descriptor_to_admitted_peers() {
    let path = sock_path("ok");
    let fd = memfd(b"vmm allocation");
    let want = id_of(&fd);
    let server = FdServer::start(&path, 0o600, fd, 42, 1 << 21, me()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().mode() & 0o777,
        0o600,
        "socket mode"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..3 {
        let got = fetch_fd(&path, &expect(42, 1 << 21), deadline).unwrap();
        assert_eq!(id_of(&got), want);
        assert_eq!(read_all(got), b"vmm allocation");
    }
    // Another instance's socket, another size, another server pid.
    let e = fetch_fd(&path, &expect(43, 1 << 21), deadline).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PublisherGone, "{e}");
    let e = fetch_fd(&path, &expect(42, 1 << 22), deadline).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");
    let mut wrong_pid = expect(42, 1 << 21);
    wrong_pid.pid = Some(1);
    let e = fetch_fd(&path, &wrong_pid, deadline).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PublisherGone, "{e}");
    drop(server);
    assert!(!path.exists(), "socket removed on drop");
    // Nobody serving: NotFound once the deadline passes.
    let e = fetch_fd(&path, &expect(42, 1 << 21), Instant::now()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound, "{e}");
}

#[test]
fn server_refuses_a_peer_of_another_user() {
    let path = sock_path("refuse");
    let own = rustix::process::geteuid().as_raw();
    // A policy that admits someone else only: we are the stranger.
    let policy = PeerPolicy {
        uid: own.wrapping_add(1),
        gid: None,
    };
    let _server = FdServer::start(&path, 0o600, memfd(b"secret"), 7, 4096, policy).unwrap();
    let e = fetch_fd(
        &path,
        &expect(7, 4096),
        Instant::now() + Duration::from_secs(2),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Permission, "{e}");
}

#[test]
fn stale_socket_is_replaced_and_late_server_is_waited_for() {
    let path = sock_path("late");
    std::fs::write(&path, b"stale").unwrap();
    let p2 = path.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        FdServer::start(&p2, 0o600, memfd(b"late"), 1, 8192, me()).unwrap()
    });
    std::fs::remove_file(&path).unwrap();
    let got = fetch_fd(
        &path,
        &expect(1, 8192),
        Instant::now() + Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(read_all(got), b"late");
    drop(t.join().unwrap());
    // A stale file where the socket goes is replaced.
    std::fs::write(&path, b"stale").unwrap();
    let s = FdServer::start(&path, 0o600, memfd(b"new"), 2, 8192, me()).unwrap();
    let got = fetch_fd(
        &path,
        &expect(2, 8192),
        Instant::now() + Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(read_all(got), b"new");
    drop(s);
}

#[test]
fn garbage_server_is_rejected() {
    let path = sock_path("garbage");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        send_fd(&s, &[0xee; 32], memfd(b"x").as_fd()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    });
    let e = fetch_fd(
        &path,
        &expect(1, 1),
        Instant::now() + Duration::from_secs(2),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");
    t.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

const CHILD_ENV: &str = "CUFRAMES_FDPASS_CHILD";

/// The child half of `descriptor_crosses_processes`: fetch, then print what
/// the descriptor refers to and holds.
#[test]
fn fdpass_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, ppid) = spec.split_once(',').unwrap();
    let e = Expect {
        epoch: 99,
        alloc_bytes: 65536,
        pid: Some(ppid.parse().unwrap()),
        uid: Some(rustix::process::geteuid().as_raw()),
    };
    let fd = fetch_fd(path.as_ref(), &e, Instant::now() + Duration::from_secs(5)).unwrap();
    let (dev, ino) = id_of(&fd);
    let content = String::from_utf8(read_all(fd)).unwrap();
    println!("CHILD-RESULT {dev} {ino} {content}");
}

#[test]
fn descriptor_crosses_processes() {
    let path = sock_path("proc");
    let fd = memfd(b"shared-across-processes");
    let (dev, ino) = id_of(&fd);
    let _server = FdServer::start(&path, 0o600, fd, 99, 65536, me()).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["fdpass_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{},{}", path.display(), std::process::id()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("CHILD-RESULT").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no result in {stdout}"));
    assert_eq!(
        line,
        format!("CHILD-RESULT {dev} {ino} shared-across-processes")
    );
}
