//! A process-wide SIGBUS guard for segment mappings.
//!
//! Touching a page of a shared file mapping that lies past the end of the
//! file raises SIGBUS, which kills the process. Anyone who can write a
//! segment file can truncate it, so without a guard one `truncate -s 0`
//! (a buggy or hostile peer, a cleanup script) would kill every process
//! that maps it. Wayland compositors face the same threat from client shm
//! pools and answer it the same way: a SIGBUS handler that, when the fault
//! lies in a registered mapping, maps anonymous zero pages over the whole
//! mapping and returns, so the faulting access and every later one see
//! zeros instead of dying. The owner learns of it through
//! [`Region::lost`] and reports the segment as corrupt.
//!
//! Faults anywhere else go to the handler installed before ours (Rust's
//! stack-overflow detector, Python's faulthandler, an embedding
//! application's own handler), or end the process exactly as they would
//! have without the guard.
//!
//! The registry is a fixed table of atomics: the handler may run on any
//! thread at any moment, so it can neither lock nor allocate.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// How many mappings can be guarded at once; a mapping made while the table
/// is full works unguarded. Each live segment handle uses one entry.
const ENTRIES: usize = 1024;

/// One registered range. `start == 0` marks a free entry; `len == 0` one
/// being filled or emptied (it matches no address).
struct Entry {
    start: AtomicUsize,
    len: AtomicUsize,
    lost: AtomicBool,
}

static TABLE: [Entry; ENTRIES] = [const {
    Entry {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        lost: AtomicBool::new(false),
    }
}; ENTRIES];

/// The SIGBUS action that was in place when the guard was installed.
struct PreviousAction(UnsafeCell<MaybeUninit<libc::sigaction>>);

// SAFETY: written once, by `install` inside `INSTALL`, before `PREVIOUS_SET`
// is set (Release); read only after `PREVIOUS_SET` is seen (Acquire), and
// never written again.
unsafe impl Sync for PreviousAction {}

static PREVIOUS: PreviousAction = PreviousAction(UnsafeCell::new(MaybeUninit::uninit()));
static PREVIOUS_SET: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// A mapping's registration; unregisters on drop. Drop it before unmapping:
/// a range that is unmapped but still registered could be reused by an
/// unrelated mapping, whose faults the guard would then swallow.
#[derive(Debug)]
pub(crate) struct Region {
    index: usize,
}

impl Region {
    /// Whether a truncation was caught in this mapping: it now holds
    /// anonymous zero pages instead of the file.
    pub(crate) fn lost(&self) -> bool {
        TABLE[self.index].lost.load(Ordering::Acquire)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let entry = &TABLE[self.index];
        // Clear the length before freeing the entry: once `start` is 0 a new
        // registrant may claim it, and a late store would erase its length.
        entry.len.store(0, Ordering::Release);
        entry.start.store(0, Ordering::Release);
    }
}

/// Guards the mapping `[start, start + len)` until the returned [`Region`]
/// is dropped, installing the handler on first use. `None` if the table is
/// full or the handler could not be installed: the mapping then works
/// unguarded.
pub(crate) fn register(start: *mut u8, len: usize) -> Option<Region> {
    INSTALL.call_once(install);
    let start = start as usize;
    if !PREVIOUS_SET.load(Ordering::Acquire) || start == 0 || len == 0 {
        return None;
    }
    TABLE.iter().enumerate().find_map(|(index, entry)| {
        entry
            .start
            .compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        entry.lost.store(false, Ordering::Relaxed);
        entry.len.store(len, Ordering::Release);
        Some(Region { index })
    })
}

/// Installs [`on_sigbus`], keeping the previous action to chain to. The swap
/// is one `sigaction` call, so a handler installed concurrently by someone
/// else is never lost.
fn install() {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no
    // flags); `sa_sigaction` is then set to a handler of the SA_SIGINFO
    // signature. `PREVIOUS` is written by the kernel before anyone reads it
    // (see its Sync impl); nothing else writes it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: SigInfoHandler = on_sigbus;
        action.sa_sigaction = handler as libc::sighandler_t;
        // No SA_NODEFER: while the handler runs SIGBUS stays blocked, so a
        // signal it re-raises is delivered only after it returns, and a
        // fault inside a chained handler ends the process (the kernel
        // forces a blocked fault signal to its default action).
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = PREVIOUS.0.get().cast::<libc::sigaction>();
        if libc::sigaction(libc::SIGBUS, &action, previous) == 0 {
            PREVIOUS_SET.store(true, Ordering::Release);
        }
    }
}

/// The registered range holding `addr`: its entry, start and length.
fn find(addr: usize) -> Option<(&'static Entry, usize, usize)> {
    TABLE.iter().find_map(|entry| {
        let start = entry.start.load(Ordering::Acquire);
        if start == 0 {
            return None;
        }
        let len = entry.len.load(Ordering::Acquire);
        // `start` unchanged after reading `len`: the length is this
        // registration's, not that of a registrant who reused the entry
        // meanwhile (possible only for a fault in a mapping being dropped).
        (addr.wrapping_sub(start) < len && entry.start.load(Ordering::Acquire) == start)
            .then_some((entry, start, len))
    })
}

/// Maps anonymous zero pages over the registered range `[start, start +
/// len)` and marks its entry lost; `false` if the kernel refused.
fn replace_with_zero_pages(entry: &Entry, start: usize, len: usize) -> bool {
    // SAFETY: the range is a live mapping of ours: registered ranges are
    // unregistered before they are unmapped. MAP_FIXED swaps its pages for
    // private zero pages in one step, so the memory behind every pointer
    // into it stays valid; only its contents (already gone with the file)
    // change. mmap is a plain system call (no locks, no allocation), safe
    // in a signal handler on Linux even though POSIX does not list it.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    entry.lost.store(true, Ordering::Release);
    true
}

/// A handler of the SA_SIGINFO signature.
type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// The SIGBUS handler. Uses only atomics, `mmap` and `sigaction`/`raise`.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo.
    // `si_addr` is meaningful only for kernel-generated faults (si_code >
    // 0); for a signal sent by a process (si_code <= 0) it is not read.
    let code = unsafe { (*info).si_code };
    if code > 0 {
        // SAFETY: as above, a kernel fault: the union holds the address.
        let addr = unsafe { (*info).si_addr() } as usize;
        if let Some((entry, start, len)) = find(addr) {
            if replace_with_zero_pages(entry, start, len) {
                return; // the access restarts and reads a zero page
            }
        }
    }
    chain(sig, info, ctx, code);
}

/// Hands a SIGBUS that is not ours to the previous action, reproducing what
/// would have happened without the guard.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, code: libc::c_int) {
    if !PREVIOUS_SET.load(Ordering::Acquire) {
        die_by_default(code);
        return;
    }
    // SAFETY: `PREVIOUS_SET` is set, so `PREVIOUS` holds the action the
    // kernel wrote and nobody writes it again (see its Sync impl).
    let previous = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    match previous.sa_sigaction {
        libc::SIG_DFL => die_by_default(code),
        libc::SIG_IGN => {
            // A sent SIGBUS was ignored. A fault cannot be: the kernel forces
            // an ignored fault signal to its default action.
            if code > 0 {
                die_by_default(code);
            }
        }
        handler if previous.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: the previous action was installed with SA_SIGINFO, so
            // `handler` is a function of this signature, and we pass it the
            // kernel's own arguments. Its sa_mask and SA_RESETHAND are not
            // emulated; SIGBUS itself stays blocked meanwhile.
            let handler: SigInfoHandler = unsafe { std::mem::transmute(handler) };
            handler(sig, info, ctx);
        }
        handler => {
            // SAFETY: without SA_SIGINFO the previous action is a plain
            // `void handler(int)`.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(sig);
        }
    }
}

/// Restores the default action so that SIGBUS ends the process as it would
/// have: a fault repeats when the handler returns; a sent signal is raised
/// again and delivered once the handler returns (SIGBUS is blocked until
/// then).
fn die_by_default(code: libc::c_int) {
    // SAFETY: an all-zero `sigaction` with SIG_DFL (0) is the default
    // action; sigaction and raise are async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        if code <= 0 {
            libc::raise(libc::SIGBUS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;
    use std::fs::File;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const PAGE: usize = 4096;

    /// A temporary file of `pages` pages filled with `fill`, removed on
    /// drop.
    struct TempFile(PathBuf, File);

    impl TempFile {
        /// For a process about to die by a signal: removed at once (its
        /// descriptor keeps it alive), so nothing is left behind.
        fn unlinked(tag: &str, pages: usize, fill: u8) -> Self {
            let file = Self::new(tag, pages, fill);
            std::fs::remove_file(&file.0).unwrap();
            file
        }

        fn new(tag: &str, pages: usize, fill: u8) -> Self {
            let path = std::env::temp_dir().join(format!(
                "cuframes-guard-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, vec![fill; pages * PAGE]).unwrap();
            let file = File::options().read(true).write(true).open(&path).unwrap();
            Self(path, file)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn read(map: &Mapping, offset: usize) -> u8 {
        // SAFETY: offset < the mapping's length; a volatile byte read of a
        // live mapping (which the guard keeps live after a truncation).
        unsafe { map.base().add(offset).read_volatile() }
    }

    fn write(map: &Mapping, offset: usize, value: u8) {
        // SAFETY: as in `read`, for a mapping made writable.
        unsafe { map.base().add(offset).write_volatile(value) }
    }

    #[test]
    fn truncated_mapping_reads_and_writes_zero_pages() {
        let victim = TempFile::new("victim", 3, 0xAB);
        let bystander = TempFile::new("bystander", 1, 0xCD);
        let map = Mapping::map(&victim.1, 3 * PAGE as u64, true).unwrap();
        let other = Mapping::map(&bystander.1, PAGE as u64, false).unwrap();
        assert_eq!(read(&map, 0), 0xAB);
        assert_eq!(read(&map, 3 * PAGE - 1), 0xAB);
        assert!(!map.lost());

        victim.1.set_len(0).unwrap();
        // Without the guard this read would kill the test process.
        assert_eq!(read(&map, 2 * PAGE + 17), 0);
        assert!(map.lost());
        assert_eq!(read(&map, 0), 0, "the whole mapping was replaced");
        write(&map, PAGE, 7);
        assert_eq!(read(&map, PAGE), 7, "the zero pages are writable");
        assert_eq!(
            victim.1.metadata().unwrap().len(),
            0,
            "the file is not touched"
        );

        assert!(!other.lost(), "other mappings are left alone");
        assert_eq!(read(&other, 5), 0xCD);
    }

    #[test]
    fn entries_are_reused() {
        let file = TempFile::new("reuse", 1, 1);
        for _ in 0..2 * ENTRIES {
            let map = Mapping::map(&file.1, PAGE as u64, false).unwrap();
            assert!(!map.lost());
            assert_eq!(read(&map, 0), 1);
        }
        let map = Mapping::map(&file.1, PAGE as u64, false).unwrap();
        assert!(map.guard_registered(), "the table did not fill up");
    }

    /// Runs [`child_scenario`] in a fresh copy of this test binary (so the
    /// guard is installed there after whatever the scenario sets up) and
    /// returns how it ended. A child that hangs (a handler returning into
    /// an endless refault) is killed after 20 s and fails the test.
    fn run_child(scenario: &str) -> std::process::ExitStatus {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["guard::tests::child_scenario", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("child {scenario} hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The little the child prints fits in the pipes; read it afterwards.
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "child {scenario}: {status:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        status
    }

    const SCENARIO: &str = "CUFRAMES_GUARD_SCENARIO";
    const CUSTOM_EXIT: i32 = 42;

    #[test]
    fn guarded_truncation_in_fresh_process_survives() {
        let status = run_child("guarded");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }

    #[test]
    fn unrelated_sigbus_reaches_previous_handler() {
        let status = run_child("custom_handler");
        assert_eq!(status.code(), Some(CUSTOM_EXIT), "{status:?}");
    }

    #[test]
    fn unrelated_sigbus_still_kills() {
        // Previous handler: Rust's stack-overflow detector, which resets to
        // SIG_DFL and lets the fault repeat.
        let status = run_child("rust_handler");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
        // Previous action SIG_DFL.
        let status = run_child("default_action");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
        // A SIGBUS sent with kill(), previous action SIG_DFL.
        let status = run_child("sent_signal");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
        // A fault cannot be ignored, guard or not.
        let status = run_child("ignored_fault");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }

    #[test]
    fn sigsegv_is_untouched() {
        // A write to a read-only mapping (a subscriber writing slot data)
        // still dies of SIGSEGV.
        let status = run_child("segv");
        assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
    }

    extern "C" fn custom_handler(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe and ends the process.
        unsafe { libc::_exit(CUSTOM_EXIT) }
    }

    fn set_action(handler: libc::sighandler_t) {
        // SAFETY: a zeroed sigaction is valid; `handler` is SIG_DFL, SIG_IGN
        // or a `void (int)` function (no SA_SIGINFO).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            assert_eq!(
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()),
                0
            );
        }
    }

    /// Faults on a truncated mapping that is not registered with the guard.
    fn unguarded_fault(file: &TempFile) -> u8 {
        // SAFETY: a fresh shared mapping of a file we hold open, unknown to
        // the guard; read after truncation to provoke SIGBUS on purpose.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file.1),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            file.1.set_len(0).unwrap();
            p.cast::<u8>().read_volatile()
        }
    }

    /// The body of the child processes (does nothing in a normal run).
    #[test]
    #[ignore = "run in a child process by the SIGBUS tests"]
    fn child_scenario() {
        let Ok(scenario) = std::env::var(SCENARIO) else {
            return;
        };
        // No core dumps from the deaths we cause.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads a live rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let file = TempFile::unlinked("child", 1, 9);
        match scenario.as_str() {
            "custom_handler" => {
                let handler: extern "C" fn(libc::c_int) = custom_handler;
                set_action(handler as libc::sighandler_t)
            }
            "default_action" | "sent_signal" => set_action(libc::SIG_DFL),
            "ignored_fault" => set_action(libc::SIG_IGN),
            _ => {}
        }
        // Installs the guard after the scenario's own action.
        let guarded = Mapping::map(&file.1, PAGE as u64, false).unwrap();
        match scenario.as_str() {
            "guarded" => {
                file.1.set_len(0).unwrap();
                assert_eq!(read(&guarded, 100), 0);
                assert!(guarded.lost());
                return;
            }
            "sent_signal" => {
                // SAFETY: sends SIGBUS to this process.
                unsafe { libc::raise(libc::SIGBUS) };
            }
            "segv" => write(&guarded, 0, 1),
            _ => {
                let other = TempFile::unlinked("child-other", 1, 9);
                unguarded_fault(&other);
            }
        }
        // SAFETY: _exit ends the process without running destructors.
        unsafe { libc::_exit(3) }; // the scenario should have ended us
    }
}
