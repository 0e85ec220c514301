//! C ABI for cuframes: `libcuframes.so` / `libcuframes.a` and
//! `include/cuframes.h` (generated from this crate by cbindgen).
//!
//! Conventions, the same for every call:
//!
//! - Calls that can fail return an `int`: `CUFRAMES_OK` (0) or one of the
//!   `CUFRAMES_ERR_*` codes, which are the numbers of `cuframes::ErrorCode`
//!   (docs/errors.md). `cuframes_last_error_message()` then says what
//!   happened, per thread.
//! - Handles are opaque. Each `*_create` has a `*_destroy`; a frame from
//!   `cuframes_subscriber_next` is released with `cuframes_frame_release`,
//!   a packet from `cuframes_packet_subscriber_next` with
//!   `cuframes_packet_release`.
//! - Every pointer argument is checked: NULL gives
//!   `CUFRAMES_ERR_INVALID_ARGUMENT`, never a crash. Out-pointers are set
//!   to NULL (or zeroed) when a call fails.
//! - Streams of encoded packets (H.264, HEVC, ...) have their own calls
//!   (`cuframes_packet_*`, module `packets`) with the same rules.
//! - Streams whose frames live in GPU memory have their own calls
//!   (`cuframes_cuda_*`, module `cuda`) with the same rules; without a
//!   CUDA driver they fail with `CUFRAMES_ERR_CUDA`.
//! - No Rust panic crosses the boundary: every entry runs under
//!   [`guard`]; a caught panic is reported as `CUFRAMES_ERR_INTERNAL`.
#![allow(non_camel_case_types)]

use cuframes::{Error, ErrorCode, Result};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

mod cuda;
mod packets;
mod publisher;
mod subscriber;

pub use cuda::*;
pub use packets::*;
pub use publisher::*;
pub use subscriber::*;

/// The C type `size_t` (stddef.h), for byte counts. A Rust alias of that
/// name, so cbindgen writes `size_t` (and `uintptr_t` for a plain `usize`,
/// see `cuda::uintptr_t`); not emitted in the header: C has it.
pub type size_t = usize;

/// Success.
pub const CUFRAMES_OK: c_int = 0;
/// Nothing arrived within the timeout.
pub const CUFRAMES_ERR_TIMEOUT: c_int = 1;
/// No stream with that key.
pub const CUFRAMES_ERR_NOT_FOUND: c_int = 2;
/// The publisher closed the stream.
pub const CUFRAMES_ERR_CLOSED: c_int = 3;
/// The publisher died or was replaced: reconnect.
pub const CUFRAMES_ERR_PUBLISHER_GONE: c_int = 4;
/// An argument is malformed (NULL, bad key, bad size, a second loan...).
pub const CUFRAMES_ERR_INVALID_ARGUMENT: c_int = 5;
/// Other protocol version or memory kind.
pub const CUFRAMES_ERR_INCOMPATIBLE: c_int = 6;
/// A bound is exhausted (subscriber records, slots, held frames).
pub const CUFRAMES_ERR_CAPACITY: c_int = 7;
/// The operating system or the owner check refused.
pub const CUFRAMES_ERR_PERMISSION: c_int = 8;
/// The CUDA driver failed or is missing.
pub const CUFRAMES_ERR_CUDA: c_int = 9;
/// Another operating-system error.
pub const CUFRAMES_ERR_IO: c_int = 10;
/// Shared memory failed validation or contradicts the protocol.
pub const CUFRAMES_ERR_CORRUPT: c_int = 11;
/// The frame was already released.
pub const CUFRAMES_ERR_RELEASED: c_int = 12;
/// Nothing ready now (non-blocking calls only).
pub const CUFRAMES_ERR_WOULD_BLOCK: c_int = 13;
/// A bug was caught at the boundary (a Rust panic); the process is still sound.
pub const CUFRAMES_ERR_INTERNAL: c_int = 14;
/// The key already has a live publisher.
pub const CUFRAMES_ERR_ALREADY_EXISTS: c_int = 15;
/// A QUEUE subscriber lagged past the publisher's block timeout and was
/// evicted from lossless duty: frames were skipped (counted as dropped);
/// the next read goes on from the newest frame.
pub const CUFRAMES_ERR_LAGGED: c_int = 16;

/// 8-bit Y plane, then interleaved UV at half resolution (2 planes).
pub const CUFRAMES_FORMAT_NV12: u32 = 1;
/// 10-bit samples in 16-bit words, NV12 arrangement (2 planes).
pub const CUFRAMES_FORMAT_P010: u32 = 2;
/// 8-bit luma only.
pub const CUFRAMES_FORMAT_GRAY8: u32 = 3;
/// Packed 8-bit R, G, B.
pub const CUFRAMES_FORMAT_RGB24: u32 = 4;
/// Packed 8-bit R, G, B, A.
pub const CUFRAMES_FORMAT_RGBA8: u32 = 5;
/// Packed 8-bit B, G, R.
pub const CUFRAMES_FORMAT_BGR24: u32 = 6;

/// Subscriber mode: always the newest frame; frames in between are skipped.
pub const CUFRAMES_MODE_NEWEST_ONLY: u32 = 1;
/// Subscriber mode: every frame in order (lossless, subject to the policy).
pub const CUFRAMES_MODE_QUEUE: u32 = 2;

/// Publisher policy for a lagging queue subscriber: wait (backpressure)
/// up to the block timeout.
pub const CUFRAMES_POLICY_BLOCK: u32 = 1;
/// Publisher policy: overwrite the oldest frame; the subscriber counts a drop.
pub const CUFRAMES_POLICY_DROP_OLDEST: u32 = 2;

/// Most planes a frame has (array size in `cuframes_lease_t`).
pub const CUFRAMES_MAX_PLANES: usize = 4;

// The C numbers are the Rust ones: checked at compile time.
const _: () = {
    assert!(CUFRAMES_ERR_TIMEOUT == ErrorCode::Timeout as c_int);
    assert!(CUFRAMES_ERR_NOT_FOUND == ErrorCode::NotFound as c_int);
    assert!(CUFRAMES_ERR_CLOSED == ErrorCode::Closed as c_int);
    assert!(CUFRAMES_ERR_PUBLISHER_GONE == ErrorCode::PublisherGone as c_int);
    assert!(CUFRAMES_ERR_INVALID_ARGUMENT == ErrorCode::InvalidArgument as c_int);
    assert!(CUFRAMES_ERR_INCOMPATIBLE == ErrorCode::Incompatible as c_int);
    assert!(CUFRAMES_ERR_CAPACITY == ErrorCode::Capacity as c_int);
    assert!(CUFRAMES_ERR_PERMISSION == ErrorCode::Permission as c_int);
    assert!(CUFRAMES_ERR_CUDA == ErrorCode::Cuda as c_int);
    assert!(CUFRAMES_ERR_IO == ErrorCode::Io as c_int);
    assert!(CUFRAMES_ERR_CORRUPT == ErrorCode::Corrupt as c_int);
    assert!(CUFRAMES_ERR_RELEASED == ErrorCode::Released as c_int);
    assert!(CUFRAMES_ERR_WOULD_BLOCK == ErrorCode::WouldBlock as c_int);
    assert!(CUFRAMES_ERR_INTERNAL == ErrorCode::Internal as c_int);
    assert!(CUFRAMES_ERR_ALREADY_EXISTS == ErrorCode::AlreadyExists as c_int);
    assert!(CUFRAMES_ERR_LAGGED == ErrorCode::Lagged as c_int);
    assert!(CUFRAMES_FORMAT_NV12 == cuframes::PixelFormat::Nv12 as u32);
    assert!(CUFRAMES_FORMAT_P010 == cuframes::PixelFormat::P010 as u32);
    assert!(CUFRAMES_FORMAT_GRAY8 == cuframes::PixelFormat::Gray8 as u32);
    assert!(CUFRAMES_FORMAT_RGB24 == cuframes::PixelFormat::Rgb24 as u32);
    assert!(CUFRAMES_FORMAT_RGBA8 == cuframes::PixelFormat::Rgba8 as u32);
    assert!(CUFRAMES_FORMAT_BGR24 == cuframes::PixelFormat::Bgr24 as u32);
    assert!(CUFRAMES_MODE_NEWEST_ONLY == cuframes::Mode::NewestOnly as u32);
    assert!(CUFRAMES_MODE_QUEUE == cuframes::Mode::Queue as u32);
    assert!(CUFRAMES_POLICY_BLOCK == cuframes::LosslessPolicy::Block as u32);
    assert!(CUFRAMES_POLICY_DROP_OLDEST == cuframes::LosslessPolicy::DropOldest as u32);
    assert!(CUFRAMES_MAX_PLANES == cuframes::core::MAX_PLANES);
};

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `e` as this thread's last error and returns its code.
fn record(e: &Error) -> c_int {
    let text = CString::new(e.to_string().replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slot may be gone: the code still tells.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = text);
    e.code() as c_int
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs the body of an entry point. A panic in `body` is caught (it never
/// unwinds into C), recorded as `Internal`, and `fallback` is returned.
/// Every `extern "C"` function of this crate goes through here.
pub(crate) fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            let e = Error::new(
                ErrorCode::Internal,
                format!("panic in the C ABI: {}", panic_text(&*payload)),
            );
            record(&e);
            // Dropping the payload could panic in turn: contain that too
            // (and leak only such a second payload).
            if let Err(nested) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(nested);
            }
            fallback
        }
    }
}

/// [`guard`] for calls that return a status code: `CUFRAMES_OK`, or the
/// error's code with its message recorded.
pub(crate) fn call(body: impl FnOnce() -> Result<()>) -> c_int {
    guard(CUFRAMES_ERR_INTERNAL, || match body() {
        Ok(()) => CUFRAMES_OK,
        Err(e) => record(&e),
    })
}

/// [`guard`] for accessors that return a value: `fallback` (with the error
/// recorded) when `body` fails.
pub(crate) fn value<T: Copy>(fallback: T, body: impl FnOnce() -> Result<T>) -> T {
    guard(fallback, || {
        body().unwrap_or_else(|e| {
            record(&e);
            fallback
        })
    })
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, message)
}

/// `p` as a shared reference, or `InvalidArgument` naming `what` if NULL.
///
/// # Safety
/// `p` is NULL or points to a live `T` not mutated for `'a`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn arg<'a, T>(p: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: the caller guarantees a non-null `p` is valid for `'a`.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// `p` as a unique reference, or `InvalidArgument` naming `what` if NULL.
///
/// # Safety
/// `p` is NULL or points to a live `T` not otherwise accessed for `'a`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees a non-null `p` is valid and unaliased for `'a`.
    unsafe { p.as_mut() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// Checks that an out-pointer is not NULL.
pub(crate) fn out_ptr<T>(p: *mut T, what: &str) -> Result<*mut T> {
    if p.is_null() {
        Err(invalid(format!("{what} is NULL")))
    } else {
        Ok(p)
    }
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that lives for `'a`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

/// C option structs (`cuframes_*_options_t`): what the Rust side makes
/// of them, and its defaults for a NULL pointer.
pub(crate) trait Options: Copy {
    /// The Rust options.
    type Rust: Default;
    /// Checks the fields and converts them.
    fn to_rust(self) -> Result<Self::Rust>;
}

/// `*options` as Rust options; the defaults for NULL.
///
/// # Safety
/// `options` is NULL or points to a valid `O`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn options_or_default<O: Options>(options: *const O) -> Result<O::Rust> {
    // SAFETY: NULL or valid per the contract.
    match unsafe { options.as_ref() } {
        None => Ok(O::Rust::default()),
        Some(o) => o.to_rust(),
    }
}

/// The `*_options_init` calls (safe functions of the C API): fills
/// `*options` with the defaults; NULL is refused.
pub(crate) fn options_init<O: Options + From<O::Rust>>(options: *mut O) -> c_int {
    call(|| {
        let out = out_ptr(options, "options")?;
        // SAFETY: non-null; the caller provides a writable struct.
        unsafe { out.write(O::Rust::default().into()) };
        Ok(())
    })
}

/// Calls that hand out a new handle (the create calls, and `next` taking
/// a frame or a packet): checks and clears `*out` (`out_what` names it in
/// the NULL message), runs `make` and hands its result out; `*out` stays
/// NULL when `make` fails.
///
/// # Safety
/// `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn create<T>(
    out: *mut *mut T,
    out_what: &str,
    make: impl FnOnce() -> Result<T>,
) -> c_int {
    call(|| {
        let out = out_ptr(out, out_what)?;
        // SAFETY: non-null, writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let handle = Box::into_raw(Box::new(make()?));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Calls that fill one out-parameter (a lease, stats, a version): checks
/// `out` (`out_what` names it in the NULL message), clears `*out` to
/// `empty`, then stores what `get` gives; `*out` stays `empty` when `get`
/// fails.
///
/// # Safety
/// `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn fill<T>(
    out: *mut T,
    out_what: &str,
    empty: T,
    get: impl FnOnce() -> Result<T>,
) -> c_int {
    call(|| {
        let out = out_ptr(out, out_what)?;
        // SAFETY: non-null, writable per the contract.
        unsafe { out.write(empty) };
        let v = get()?;
        // SAFETY: as above.
        unsafe { out.write(v) };
        Ok(())
    })
}

/// [`fill`] from a handle: `get` reads `*handle` (`what` names it in the
/// NULL message, checked after `out`).
///
/// # Safety
/// `handle` is NULL or points to a live `H` not mutated during the call;
/// `out` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn fill_from<H, T>(
    handle: *const H,
    what: &str,
    out: *mut T,
    out_what: &str,
    empty: T,
    get: impl FnOnce(&H) -> Result<T>,
) -> c_int {
    let get = || {
        // SAFETY: per the contract.
        get(unsafe { arg(handle, what) }?)
    };
    // SAFETY: per the contract.
    unsafe { fill(out, out_what, empty, get) }
}

/// Accessors of a handle: what `get` reads from `*handle`, or `fallback`
/// (with `InvalidArgument` naming `what` recorded) for NULL or when `get`
/// fails.
///
/// # Safety
/// `handle` is NULL or points to a live `H` not mutated during the call.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn with<H, T: Copy>(
    handle: *const H,
    what: &str,
    fallback: T,
    get: impl FnOnce(&H) -> Result<T>,
) -> T {
    value(fallback, || {
        // SAFETY: per the contract.
        get(unsafe { arg(handle, what) }?)
    })
}

/// Stores `v` in `*p` unless `p` is NULL (optional out-parameters).
///
/// # Safety
/// `p` is NULL or writable.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-null, writable per the contract.
        unsafe { p.write(v) };
    }
}

/// `len` bytes at `data` (a frame or packet to copy in): none for NULL
/// with `len` 0, `InvalidArgument` for NULL with bytes to read.
///
/// # Safety
/// `data` is NULL or readable for `len` bytes, unchanged for `'a`.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn byte_slice<'a>(data: *const u8, len: usize) -> Result<&'a [u8]> {
    if data.is_null() {
        // No bytes need no buffer (an empty packet).
        return if len == 0 {
            Ok(&[])
        } else {
            Err(invalid("data is NULL"))
        };
    }
    // SAFETY: non-null and readable for `len` bytes per the contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// The destroy and release calls: takes back a handle made by [`create`]
/// and drops it under [`guard`]; NULL is ignored.
///
/// # Safety
/// `p` is NULL or a pointer from `create::<T>` not yet taken back, and not
/// used afterwards.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
pub(crate) unsafe fn take_back<T>(p: *mut T) {
    guard((), || {
        if !p.is_null() {
            // SAFETY: `p` came from `Box::into_raw` and is dropped once.
            drop(unsafe { Box::from_raw(p) });
        }
    })
}

static VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("version string"),
    };

/// The library version, e.g. "0.1.0". A static string: do not free it.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn cuframes_version() -> *const c_char {
    VERSION.as_ptr()
}

fn code_strings(describe: fn(ErrorCode) -> &'static str, ok: &str) -> Vec<CString> {
    let mut table = vec![CString::new(ok).unwrap_or_default()];
    table.extend(
        ErrorCode::ALL
            .iter()
            .map(|&c| CString::new(describe(c)).unwrap_or_default()),
    );
    table
}

fn code_string(
    table: &'static OnceLock<Vec<CString>>,
    code: c_int,
    build: fn() -> Vec<CString>,
) -> *const c_char {
    guard(c"unknown error".as_ptr(), || {
        let table = table.get_or_init(build);
        let known = (code == CUFRAMES_OK || ErrorCode::from_i32(code).is_some())
            .then(|| table.get(code as usize))
            .flatten();
        known.map_or(c"unknown error code".as_ptr(), |s| s.as_ptr())
    })
}

/// A one-line description of an error code ("timed out", "stream not
/// found", ...; "success" for 0, "unknown error code" for numbers that are
/// not codes). A static string: do not free it.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn cuframes_strerror(code: c_int) -> *const c_char {
    static TABLE: OnceLock<Vec<CString>> = OnceLock::new();
    code_string(&TABLE, code, || {
        code_strings(ErrorCode::description, "success")
    })
}

/// The stable name of an error code ("Timeout", "NotFound", ...; "Ok" for
/// 0), as in docs/errors.md and the Python exception classes. A static
/// string: do not free it.
///
/// Thread safety: any thread, any time.
#[no_mangle]
pub extern "C" fn cuframes_error_name(code: c_int) -> *const c_char {
    static TABLE: OnceLock<Vec<CString>> = OnceLock::new();
    code_string(&TABLE, code, || code_strings(ErrorCode::name, "Ok"))
}

/// What went wrong in the last failed cuframes call on this thread, e.g.
/// "timed out: no frame within 5ms"; "" if none failed yet. Successful
/// calls leave it unchanged (like errno). The string belongs to the
/// library and stays valid until the next failing call on this thread:
/// copy it to keep it.
///
/// Thread safety: any thread; each thread has its own message.
#[no_mangle]
pub extern "C" fn cuframes_last_error_message() -> *const c_char {
    guard(c"".as_ptr(), || {
        LAST_ERROR
            .try_with(|last| last.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
}

/// Test hook, not in the header: panics inside the boundary guard when
/// `code` is non-zero, to show that the panic comes back as
/// `CUFRAMES_ERR_INTERNAL` instead of unwinding into C.
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn cuframes_testing_panic(code: c_int) -> c_int {
    call(|| {
        if code != 0 {
            panic!("test panic {code}");
        }
        Ok(())
    })
}

// C may hand a publisher or subscriber to another thread between calls and
// read or release frames anywhere: the wrapped types must allow it.
const _: fn() = || {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<cuframes::Publisher>();
    send::<cuframes::Subscriber>();
    send_sync::<cuframes::Frame>();
};

#[cfg(test)]
mod tests {
    //! Also the helpers of the other modules' unit tests.

    use super::*;

    /// The code of a refused argument.
    pub(crate) const BAD: c_int = CUFRAMES_ERR_INVALID_ARGUMENT;

    fn text(p: *const c_char) -> String {
        // SAFETY: every string entry returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
    }

    /// This thread's last error message.
    pub(crate) fn last_error() -> String {
        text(cuframes_last_error_message())
    }

    #[test]
    fn strerror_covers_every_code() {
        assert_eq!(text(cuframes_strerror(0)), "success");
        assert_eq!(text(cuframes_error_name(0)), "Ok");
        for c in ErrorCode::ALL {
            assert_eq!(text(cuframes_strerror(c as c_int)), c.description());
            assert_eq!(text(cuframes_error_name(c as c_int)), c.name());
        }
        for bad in [-1, 17, 1000, c_int::MIN] {
            assert_eq!(text(cuframes_strerror(bad)), "unknown error code");
        }
    }

    #[test]
    fn version_is_the_crate_version() {
        assert_eq!(text(cuframes_version()), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn round_trip_through_the_c_entry_points() {
        use std::ptr::{null, null_mut};
        std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
        let key = CString::new(format!("ffi-unit-{}", std::process::id())).unwrap();
        let mut publisher = null_mut();
        let mut subscriber = null_mut();
        let mut frame = null_mut();
        // SAFETY: every pointer passed is valid or deliberately NULL, and
        // each handle is destroyed once, after its last use.
        unsafe {
            let rc = cuframes_publisher_create(key.as_ptr(), 1, 64, 32, null(), &mut publisher);
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            let rc = cuframes_subscriber_create(
                key.as_ptr(),
                c"unit".as_ptr(),
                2,
                null(),
                &mut subscriber,
            );
            assert_eq!(rc, CUFRAMES_OK);
            let mut lease = std::mem::MaybeUninit::<cuframes_lease_t>::uninit();
            assert_eq!(
                cuframes_publisher_loan(publisher, lease.as_mut_ptr()),
                CUFRAMES_OK
            );
            let lease = lease.assume_init();
            assert_eq!((lease.seq, lease.plane_count, lease.pitch[0]), (1, 2, 64));
            lease.planes[1].write(77);
            let mut seq = 0;
            assert_eq!(
                cuframes_publisher_commit(publisher, 5, &mut seq),
                CUFRAMES_OK
            );
            assert_eq!(seq, 1);
            assert_eq!(
                cuframes_subscriber_next(subscriber, 1000, &mut frame),
                CUFRAMES_OK
            );
            assert_eq!(cuframes_frame_seq(frame), 1);
            assert_eq!(cuframes_frame_pts_ns(frame), 5);
            assert_eq!(*cuframes_frame_plane_data(frame, 1), 77);
            assert!(cuframes_frame_plane_data(frame, 2).is_null());
            assert_eq!(
                last_error(),
                "invalid argument: plane 2: the frame has 2 plane(s)"
            );
            cuframes_frame_release(frame);
            let rc = cuframes_subscriber_next(subscriber, 1, &mut frame);
            assert_eq!((rc, frame), (CUFRAMES_ERR_TIMEOUT, null_mut()));
            assert_eq!(
                cuframes_subscriber_next(subscriber, 1, null_mut()),
                CUFRAMES_ERR_INVALID_ARGUMENT
            );
            assert_eq!(last_error(), "invalid argument: frame_out is NULL");
            cuframes_subscriber_destroy(subscriber);
            cuframes_publisher_destroy(publisher);
        }
    }

    #[test]
    fn panics_are_caught_and_reported() {
        assert_eq!(cuframes_testing_panic(0), CUFRAMES_OK);
        assert_eq!(cuframes_testing_panic(7), CUFRAMES_ERR_INTERNAL);
        assert_eq!(
            last_error(),
            "internal error: panic in the C ABI: test panic 7"
        );
        assert_eq!(value(5u32, || -> Result<u32> { panic!("boom") }), 5);
        let other = std::thread::spawn(last_error).join().unwrap();
        assert_eq!(other, "", "the message is per thread");
    }
}
