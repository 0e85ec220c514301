//! Handing the VMM allocation's file descriptor to subscribers: a unix
//! socket next to the segment, `SO_PEERCRED` checks on both ends, and the
//! descriptor sent with `SCM_RIGHTS`. Works across containers that share
//! the socket directory, with no shared pid or IPC namespace needed.
//!
//! Nothing here touches CUDA, so it is tested with any descriptor (a
//! memfd) on machines without a GPU.

use cuframes::{Error, ErrorCode, Result};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Credentials of the process at the other end of a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id (in the reader's pid namespace; 0 if not mapped there).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// Who may receive the descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The user that may connect (the publisher's own).
    pub uid: u32,
    /// Also admit peers of this primary group (streams shared with a group,
    /// mode 0660); `None` admits the user only.
    pub gid: Option<u32>,
}

impl PeerPolicy {
    /// This process's user, plus its group when `group_shared`.
    pub fn current(group_shared: bool) -> Self {
        Self {
            uid: rustix::process::geteuid().as_raw(),
            gid: group_shared.then(|| rustix::process::getegid().as_raw()),
        }
    }
}

/// Admits `peer` under `policy`, or says why not (`Permission`).
///
/// ```
/// use cuframes_cuda::fdpass::{check_peer, PeerCred, PeerPolicy};
/// let me = PeerPolicy { uid: 1000, gid: None };
/// assert!(check_peer(&PeerCred { pid: 7, uid: 1000, gid: 1000 }, &me).is_ok());
/// assert!(check_peer(&PeerCred { pid: 7, uid: 1001, gid: 1000 }, &me).is_err());
/// ```
pub fn check_peer(peer: &PeerCred, policy: &PeerPolicy) -> Result<()> {
    if peer.uid == policy.uid || policy.gid.is_some_and(|g| g == peer.gid) {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::Permission,
        format!(
            "peer pid {} (uid {}, gid {}) may not open this stream (allowed: uid {}{})",
            peer.pid,
            peer.uid,
            peer.gid,
            policy.uid,
            policy
                .gid
                .map(|g| format!(" or gid {g}"))
                .unwrap_or_default()
        ),
    ))
}

/// `SO_PEERCRED` of a connected unix socket. The pid is 0 when the peer's
/// process is not visible in our pid namespace (another container); the
/// ids are mapped into our user namespace.
pub fn peer_cred(sock: &UnixStream) -> Result<PeerCred> {
    use std::os::fd::AsRawFd;
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the socket is open for the call; the kernel writes at most
    // `len` bytes into `c`, a properly sized and aligned ucred.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(Error::io("SO_PEERCRED", std::io::Error::last_os_error()));
    }
    Ok(PeerCred {
        pid: c.pid.max(0) as u32,
        uid: c.uid,
        gid: c.gid,
    })
}

/// Sends `payload` with one descriptor attached (`SCM_RIGHTS`).
pub fn send_fd(sock: &UnixStream, payload: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Error::new(ErrorCode::Internal, "SCM_RIGHTS does not fit"));
    }
    let n = sendmsg(
        sock,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| Error::io("sendmsg", e.into()))?;
    if n != payload.len() {
        return Err(Error::new(ErrorCode::Io, "sendmsg: short write"));
    }
    Ok(())
}

/// Sends `payload` alone.
pub fn send_plain(sock: &UnixStream, payload: &[u8]) -> Result<()> {
    let mut control = SendAncillaryBuffer::default();
    sendmsg(
        sock,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| Error::io("sendmsg", e.into()))?;
    Ok(())
}

/// Receives one message into `buf` and the descriptor sent with it, if
/// any (close-on-exec). Extra descriptors are closed; a truncated message
/// or truncated control data is an error.
pub fn recv_fd(sock: &UnixStream, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| Error::io("recvmsg", e.into()))?;
    let mut got: Option<OwnedFd> = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                // Keep the first; the rest drop (close) here.
                if got.is_none() {
                    got = Some(fd);
                }
            }
        }
    }
    if msg
        .flags
        .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC)
    {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "fd message truncated: the sender is not a cuframes publisher",
        ));
    }
    Ok((msg.bytes, got))
}

/// The publisher's greeting, sent with the descriptor (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Hello {
    /// [`HELLO_MAGIC`].
    pub magic: [u8; 8],
    /// 0: descriptor attached; 1: refused (credential check).
    pub status: u32,
    /// Zero.
    pub reserved: u32,
    /// Epoch of the publisher instance (equals the segment header's).
    pub epoch: u64,
    /// Bytes of the allocation behind the descriptor.
    pub alloc_bytes: u64,
}

/// Magic of [`Hello`].
pub const HELLO_MAGIC: [u8; 8] = *b"CFVMMFD1";
const STATUS_OK: u32 = 0;
const STATUS_REFUSED: u32 = 1;

/// Path of a stream's descriptor socket: `<shm dir>/.cuframes.<key>.sock`.
/// Fails (`InvalidArgument`) if it would not fit a socket address.
pub fn socket_path(key: &str) -> Result<PathBuf> {
    cuframes::validate_key(key)?;
    let p = cuframes::shm_dir().join(format!(".cuframes.{key}.sock"));
    if p.as_os_str().len() >= 108 {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "socket path {} is too long for a unix socket; use a shorter key or CUFRAMES_SHM_DIR",
                p.display()
            ),
        ));
    }
    Ok(p)
}

/// Serves one descriptor to every admitted peer that connects, from a
/// background thread, until dropped (which also removes the socket).
pub struct FdServer {
    path: PathBuf,
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FdServer {
    /// Binds `path` (replacing a stale socket: the caller holds the
    /// stream's key lock), sets its mode, and starts serving `fd` with the
    /// given epoch and allocation size to peers `policy` admits.
    pub fn start(
        path: &Path,
        mode: u32,
        fd: OwnedFd,
        epoch: u64,
        alloc_bytes: u64,
        policy: PeerPolicy,
    ) -> Result<FdServer> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("remove stale {}", path.display()), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("bind {}", path.display()), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o660))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let hello = Hello {
            magic: HELLO_MAGIC,
            status: STATUS_OK,
            reserved: 0,
            epoch,
            alloc_bytes,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cuframes-fd".into())
            .spawn(move || serve(listener, fd, hello, policy, stop2))
            .map_err(|e| Error::io("spawn fd server", e))?;
        Ok(FdServer {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn serve(
    listener: UnixListener,
    fd: OwnedFd,
    hello: Hello,
    policy: PeerPolicy,
    stop: Arc<AtomicBool>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Ok(sock) = conn else { continue };
        let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
        let admitted = peer_cred(&sock).and_then(|c| check_peer(&c, &policy));
        let _ = match admitted {
            Ok(()) => send_fd(&sock, hello.as_bytes(), fd.as_fd()),
            Err(_) => send_plain(
                &sock,
                Hello {
                    status: STATUS_REFUSED,
                    epoch: 0,
                    alloc_bytes: 0,
                    ..hello
                }
                .as_bytes(),
            ),
        };
    }
}

impl Drop for FdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// What the subscriber expects of the server.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The segment's epoch.
    pub epoch: u64,
    /// The allocation size announced in the backend area.
    pub alloc_bytes: u64,
    /// The server's pid, if it lives in our pid namespace.
    pub pid: Option<u32>,
    /// Users accepted as the server (ours; `None`: any, for streams of
    /// another owner).
    pub uid: Option<u32>,
}

/// Connects to `path` (retrying while it does not exist yet or refuses,
/// until `deadline`), checks the server's credentials and greeting, and
/// returns the descriptor.
pub fn fetch_fd(path: &Path, expect: &Expect, deadline: Instant) -> Result<OwnedFd> {
    let sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "connect {} (the publisher's descriptor socket)",
                        path.display()
                    ),
                    e,
                ))
            }
        }
    };
    let server = peer_cred(&sock)?;
    if expect.uid.is_some_and(|u| u != server.uid) {
        return Err(Error::new(
            ErrorCode::Permission,
            format!(
                "socket {} is served by uid {}, not the stream's owner",
                path.display(),
                server.uid
            ),
        ));
    }
    if expect.pid.is_some_and(|p| p != server.pid) {
        return Err(Error::new(
            ErrorCode::PublisherGone,
            format!(
                "socket {} is served by pid {}, not the stream's publisher",
                path.display(),
                server.pid
            ),
        ));
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let _ = sock.set_read_timeout(Some(left));
    let mut buf = [0u8; 64];
    let (n, fd) = recv_fd(&sock, &mut buf)?;
    let hello = Hello::read_from_bytes(&buf[..n.min(buf.len())]).map_err(|_| {
        Error::new(
            ErrorCode::Corrupt,
            format!("descriptor socket sent {n} bytes, not a greeting"),
        )
    })?;
    if hello.magic != HELLO_MAGIC {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "descriptor socket: bad magic",
        ));
    }
    if hello.status == STATUS_REFUSED {
        return Err(Error::new(
            ErrorCode::Permission,
            "the publisher refused this process (peer credential check)",
        ));
    }
    if hello.status != STATUS_OK {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "descriptor socket: bad status",
        ));
    }
    if hello.epoch != expect.epoch {
        return Err(Error::new(
            ErrorCode::PublisherGone,
            "descriptor socket belongs to another publisher instance",
        ));
    }
    if hello.alloc_bytes != expect.alloc_bytes {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "descriptor socket announces another allocation size",
        ));
    }
    fd.ok_or_else(|| Error::new(ErrorCode::Corrupt, "descriptor socket sent no descriptor"))
}
