//! The CUDA calls through their C entry points. Without a driver (plain
//! `cargo test`): argument checks, the error without a driver, refusals.
//! With one (`scripts/cuda-sim.sh cargo test -p cuframes-ffi`, or
//! `CUFRAMES_GPU=1` on a GPU machine): an in-process round trip in both
//! export modes. The C test (`ffi/tests/c/test_cuda.c`) runs publisher and
//! subscriber as separate processes.

use super::*;
use crate::tests::{last_error, BAD};
use crate::{
    cuframes_publisher_create, cuframes_publisher_destroy, cuframes_subscriber_create,
    cuframes_subscriber_options_init, cuframes_subscriber_options_t, Options, CUFRAMES_ERR_CUDA,
    CUFRAMES_ERR_INCOMPATIBLE, CUFRAMES_OK,
};
use cuframes_cuda::ExportRequest;
use std::ffi::CString;
use std::ptr::{null, null_mut};

/// `CUFRAMES_GPU=1`: a driver is expected (the simulator or a GPU).
fn gpu() -> bool {
    std::env::var("CUFRAMES_GPU").as_deref() == Ok("1")
}

fn shm_dir() {
    std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
}

fn key(what: &str) -> CString {
    CString::new(format!("ffi-cuda-{what}-{}", std::process::id())).unwrap()
}

fn subscriber_options(connect_ms: u32) -> cuframes_subscriber_options_t {
    let mut so = std::mem::MaybeUninit::uninit();
    assert_eq!(
        cuframes_subscriber_options_init(so.as_mut_ptr()),
        CUFRAMES_OK
    );
    // SAFETY: initialised by the call above.
    let mut so = unsafe { so.assume_init() };
    so.connect_timeout_ms = connect_ms;
    so
}

#[test]
fn null_arguments_are_refused() {
    let mut publisher = 1usize as *mut cuframes_cuda_publisher_t;
    let mut subscriber = 1usize as *mut cuframes_cuda_subscriber_t;
    let mut frame = 1usize as *mut cuframes_cuda_frame_t;
    let mut lease = cuframes_cuda_lease_t {
        seq: 9,
        stream: 7,
        ..cuframes_cuda_lease_t::EMPTY
    };
    let (byte, ptr, pitch) = (0u8, 1u64, 1u32);
    let k = c"ffi-cuda-null".as_ptr();
    // SAFETY: every pointer is valid or NULL; the non-null handles above
    // are never dereferenced (each call fails on a NULL first) and are
    // overwritten with NULL.
    unsafe {
        assert_eq!(cuframes_cuda_driver_version(null_mut()), BAD);
        assert_eq!(cuframes_cuda_device_count(null_mut()), BAD);
        assert_eq!(cuframes_cuda_publisher_options_init(null_mut()), BAD);
        let rc = cuframes_cuda_publisher_create(null(), 1, 64, 48, null(), &mut publisher);
        assert_eq!(rc, BAD);
        assert!(publisher.is_null());
        assert_eq!(
            cuframes_cuda_publisher_create(k, 1, 64, 48, null(), null_mut()),
            BAD
        );
        assert_eq!(cuframes_cuda_publisher_loan(null_mut(), &mut lease), BAD);
        assert_eq!((lease.seq, lease.stream), (0, 0), "lease zeroed on failure");
        assert_eq!(cuframes_cuda_publisher_loan(null_mut(), null_mut()), BAD);
        assert_eq!(
            cuframes_cuda_publisher_commit(null_mut(), 0, null_mut()),
            BAD
        );
        assert_eq!(cuframes_cuda_publisher_abort(null_mut()), BAD);
        assert_eq!(
            cuframes_cuda_publisher_publish_from_host(null_mut(), &byte, 1, 0, null_mut()),
            BAD
        );
        assert_eq!(
            cuframes_cuda_publisher_copy_from_device(null_mut(), &ptr, &pitch, 1, 0),
            BAD
        );
        let rc = cuframes_cuda_publisher_publish_from_device(
            null_mut(),
            &ptr,
            &pitch,
            1,
            0,
            0,
            null_mut(),
        );
        assert_eq!(rc, BAD);
        assert_eq!(cuframes_cuda_publisher_set_stream(null_mut(), 0), BAD);
        assert_eq!(cuframes_cuda_publisher_stream(null()), 0);
        assert_eq!(cuframes_cuda_publisher_export_mode(null()), 0);
        assert_eq!(cuframes_cuda_publisher_packed_size(null()), 0);
        assert_eq!(cuframes_cuda_publisher_stats(null(), null_mut()), BAD);
        cuframes_cuda_publisher_destroy(null_mut());

        let so = subscriber_options(10);
        for (key, name) in [(null(), k), (k, null())] {
            let rc = cuframes_cuda_subscriber_create(key, name, 1, -1, 0, &so, &mut subscriber);
            assert_eq!(rc, BAD);
            assert!(subscriber.is_null());
        }
        let rc = cuframes_cuda_subscriber_create(k, k, 1, -1, 0, &so, null_mut());
        assert_eq!(rc, BAD);
        let rc = cuframes_cuda_subscriber_create(k, k, 1, -2, 0, &so, &mut subscriber);
        assert_eq!(rc, BAD);
        assert!(last_error().contains("device -2"), "{}", last_error());
        let rc = cuframes_cuda_subscriber_create(k, k, 9, -1, 0, &so, &mut subscriber);
        assert_eq!(rc, BAD);
        // The per-thread default stream is refused before anything is opened.
        let rc = cuframes_cuda_subscriber_create(k, k, 1, -1, 2, &so, &mut subscriber);
        assert_eq!(rc, BAD);
        assert!(last_error().contains("per-thread"), "{}", last_error());
        assert_eq!(
            cuframes_cuda_subscriber_set_consumer_stream(null_mut(), 0),
            BAD
        );
        assert_eq!(cuframes_cuda_subscriber_consumer_stream(null()), 0);
        assert_eq!(cuframes_cuda_subscriber_device(null()), -1);
        assert_eq!(cuframes_cuda_subscriber_export_mode(null()), 0);
        assert_eq!(
            cuframes_cuda_subscriber_next(null_mut(), 0, &mut frame),
            BAD
        );
        assert!(frame.is_null());
        assert_eq!(
            cuframes_cuda_subscriber_next(null_mut(), 0, null_mut()),
            BAD
        );
        assert_eq!(
            cuframes_cuda_subscriber_try_next(null_mut(), null_mut()),
            BAD
        );
        assert_eq!(cuframes_cuda_subscriber_stats(null(), null_mut()), BAD);
        cuframes_cuda_subscriber_destroy(null_mut());

        assert_eq!(cuframes_cuda_frame_device_ptr(null(), 0), 0);
        assert_eq!(cuframes_cuda_frame_pitch(null(), 0), 0);
        assert_eq!(cuframes_cuda_frame_rows(null(), 0), 0);
        assert_eq!(cuframes_cuda_frame_row_bytes(null(), 0), 0);
        assert_eq!(cuframes_cuda_frame_plane_count(null()), 0);
        assert_eq!(cuframes_cuda_frame_seq(null()), 0);
        assert_eq!(cuframes_cuda_frame_pts_ns(null()), 0);
        assert_eq!(cuframes_cuda_frame_commit_ns(null()), 0);
        assert_eq!(cuframes_cuda_frame_width(null()), 0);
        assert_eq!(cuframes_cuda_frame_height(null()), 0);
        assert_eq!(cuframes_cuda_frame_format(null()), 0);
        assert_eq!(cuframes_cuda_frame_consumer_stream(null()), 0);
        assert_eq!(cuframes_cuda_frame_device(null()), -1);
        assert_eq!(last_error(), "invalid argument: frame is NULL");
        assert_eq!(cuframes_cuda_frame_use_on(null(), 0), BAD);
        assert_eq!(cuframes_cuda_frame_copy_to_host(null(), null_mut(), 0), BAD);
        cuframes_cuda_frame_release(null_mut());
    }
}

#[test]
fn options_round_trip_and_are_checked() {
    let mut o = std::mem::MaybeUninit::uninit();
    assert_eq!(
        cuframes_cuda_publisher_options_init(o.as_mut_ptr()),
        CUFRAMES_OK
    );
    // SAFETY: initialised by the call above.
    let o = unsafe { o.assume_init() };
    assert_eq!(
        (
            o.device,
            o.export_mode,
            o.pitch_align,
            o.slot_count,
            o.policy,
            o.close_grace_ms,
            o.evict_lagging
        ),
        (0, CUFRAMES_CUDA_EXPORT_AUTO, 512, 8, 1, 2000, 1)
    );
    let r = o.to_rust().unwrap();
    assert_eq!((r.export, r.pitch_align), (ExportRequest::Auto, 512));
    for (mode, want) in [
        (CUFRAMES_CUDA_EXPORT_IPC, ExportRequest::Ipc),
        (CUFRAMES_CUDA_EXPORT_VMM_FD, ExportRequest::VmmFd),
    ] {
        let c = cuframes_cuda_publisher_options_t {
            export_mode: mode,
            ..o
        };
        assert_eq!(c.to_rust().unwrap().export, want);
    }
    for bad in [
        cuframes_cuda_publisher_options_t {
            export_mode: 3,
            ..o
        },
        cuframes_cuda_publisher_options_t { policy: 0, ..o },
        cuframes_cuda_publisher_options_t {
            heartbeat_ms: 0,
            ..o
        },
    ] {
        assert_eq!(bad.to_rust().unwrap_err().code() as c_int, BAD);
    }
}

#[test]
fn without_a_driver_create_fails_cleanly() {
    if gpu() {
        return;
    }
    shm_dir();
    let key = key("nodrv");
    assert_eq!(cuframes_cuda_available(), 0);
    let (mut version, mut count) = (5, 5);
    // SAFETY: valid pointers.
    let rc = unsafe { cuframes_cuda_driver_version(&mut version) };
    assert_eq!((rc, version), (CUFRAMES_ERR_CUDA, 0));
    assert!(last_error().contains("libcuda"), "{}", last_error());
    // SAFETY: valid pointer.
    let rc = unsafe { cuframes_cuda_device_count(&mut count) };
    assert_eq!((rc, count), (CUFRAMES_ERR_CUDA, 0));
    let mut publisher = null_mut();
    // SAFETY: valid pointers.
    let rc =
        unsafe { cuframes_cuda_publisher_create(key.as_ptr(), 1, 64, 48, null(), &mut publisher) };
    assert_eq!(rc, CUFRAMES_ERR_CUDA);
    assert!(publisher.is_null());
    assert!(last_error().contains("libcuda"), "{}", last_error());
    let dir = std::env::temp_dir();
    let name = key.to_str().unwrap();
    for f in [format!("cuframes.{name}"), format!(".cuframes.{name}.sock")] {
        assert!(!dir.join(&f).exists(), "{f} left behind");
    }
}

#[test]
fn a_host_stream_is_refused() {
    shm_dir();
    let key = key("host");
    let mut host = null_mut();
    let mut subscriber = 1usize as *mut cuframes_cuda_subscriber_t;
    let so = subscriber_options(100);
    // SAFETY: valid pointers; the publisher is destroyed once.
    unsafe {
        let rc = cuframes_publisher_create(key.as_ptr(), 1, 64, 48, null(), &mut host);
        assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
        let rc = cuframes_cuda_subscriber_create(
            key.as_ptr(),
            c"gpu".as_ptr(),
            1,
            -1,
            0,
            &so,
            &mut subscriber,
        );
        assert_eq!(rc, BAD, "{}", last_error());
        assert!(subscriber.is_null());
        assert!(last_error().contains("host memory"), "{}", last_error());
        cuframes_publisher_destroy(host);
    }
}

/// Publisher and subscriber in this process through the C calls: frames
/// copied in from host memory, read back through the copy-to-host call,
/// every byte compared; the lease, stream and error paths.
fn round_trip(export_mode: u32) {
    shm_dir();
    let key = key(if export_mode == CUFRAMES_CUDA_EXPORT_IPC {
        "ipc"
    } else {
        "vmm"
    });
    let (w, h) = (96u32, 64u32);
    let mut o = std::mem::MaybeUninit::uninit();
    cuframes_cuda_publisher_options_init(o.as_mut_ptr());
    // SAFETY: initialised by the call above.
    let mut o = unsafe { o.assume_init() };
    o.export_mode = export_mode;
    o.slot_count = 4;
    let so = subscriber_options(2000);
    let (mut publisher, mut subscriber, mut host) = (null_mut(), null_mut(), null_mut());
    let mut lease = cuframes_cuda_lease_t::EMPTY;
    // SAFETY: valid pointers; every handle is freed once after its last use.
    unsafe {
        let rc = cuframes_cuda_publisher_create(key.as_ptr(), 1, w, h, &o, &mut publisher);
        assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
        assert_eq!(cuframes_cuda_publisher_export_mode(publisher), export_mode);
        let rc = cuframes_subscriber_create(key.as_ptr(), c"host".as_ptr(), 2, &so, &mut host);
        assert_eq!(rc, CUFRAMES_ERR_INCOMPATIBLE, "{}", last_error());
        let rc = cuframes_cuda_subscriber_create(
            key.as_ptr(),
            c"unit".as_ptr(),
            2,
            -1,
            0,
            &so,
            &mut subscriber,
        );
        assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
        assert_eq!(
            cuframes_cuda_subscriber_export_mode(subscriber),
            export_mode
        );
        assert_eq!(
            cuframes_cuda_subscriber_set_consumer_stream(subscriber, 2),
            BAD
        );
        assert_eq!(cuframes_cuda_subscriber_consumer_stream(subscriber), 0);
        assert_eq!(cuframes_cuda_publisher_set_stream(publisher, 2), BAD);

        let own = cuframes_cuda_publisher_stream(publisher);
        assert_ne!(own, 0, "the publisher has its own stream");
        assert_eq!(
            cuframes_cuda_publisher_loan(publisher, &mut lease),
            CUFRAMES_OK
        );
        assert_eq!((lease.seq, lease.plane_count, lease.stream), (1, 2, own));
        assert_eq!(
            (lease.width, lease.height, lease.row_bytes[0], lease.rows[1]),
            (w, h, w, h / 2)
        );
        assert!(lease.pitch[0] % 512 == 0 && lease.device_ptr[1] > lease.device_ptr[0]);
        assert_eq!(cuframes_cuda_publisher_set_stream(publisher, 0), BAD);
        assert!(last_error().contains("loaned"), "{}", last_error());
        let mut second = cuframes_cuda_lease_t::EMPTY;
        assert_eq!(cuframes_cuda_publisher_loan(publisher, &mut second), BAD);
        let (ptrs, pitches) = ([lease.device_ptr[0]], [lease.pitch[0]]);
        let rc = cuframes_cuda_publisher_copy_from_device(
            publisher,
            ptrs.as_ptr(),
            pitches.as_ptr(),
            1,
            0,
        );
        assert_eq!(rc, BAD, "one plane of two");
        assert!(last_error().contains("plane_count 1"), "{}", last_error());
        assert_eq!(cuframes_cuda_publisher_abort(publisher), CUFRAMES_OK);
        assert_eq!(cuframes_cuda_publisher_abort(publisher), BAD);
        assert_eq!(
            cuframes_cuda_publisher_commit(publisher, 0, null_mut()),
            BAD
        );

        let len = cuframes_cuda_publisher_packed_size(publisher);
        assert_eq!(len, (w * h * 3 / 2) as usize);
        for seq in 1..=3u64 {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seq * 13) as u8).collect();
            let mut got = 0;
            let rc = cuframes_cuda_publisher_publish_from_host(
                publisher,
                data.as_ptr(),
                len,
                seq as i64 * 10,
                &mut got,
            );
            assert_eq!((rc, got), (CUFRAMES_OK, seq), "{}", last_error());
            let mut frame = null_mut();
            let rc = cuframes_cuda_subscriber_next(subscriber, 2000, &mut frame);
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            assert_eq!(cuframes_cuda_frame_seq(frame), seq);
            assert_eq!(cuframes_cuda_frame_pts_ns(frame), seq as i64 * 10);
            assert_eq!(cuframes_cuda_frame_plane_count(frame), 2);
            assert_eq!(cuframes_cuda_frame_consumer_stream(frame), 0);
            assert_eq!(cuframes_cuda_frame_device_ptr(frame, 2), 0);
            assert!(last_error().contains("plane 2"), "{}", last_error());
            assert!(cuframes_cuda_frame_commit_ns(frame) > 0);
            let mut back = vec![0u8; len];
            let rc = cuframes_cuda_frame_copy_to_host(frame, back.as_mut_ptr(), len - 1);
            assert_eq!(rc, BAD);
            let rc = cuframes_cuda_frame_copy_to_host(frame, back.as_mut_ptr(), len);
            assert_eq!(rc, CUFRAMES_OK, "{}", last_error());
            assert!(back == data, "frame {seq} differs");
            cuframes_cuda_frame_release(frame);
        }
        let mut frame = null_mut();
        let rc = cuframes_cuda_subscriber_try_next(subscriber, &mut frame);
        assert_eq!((rc, frame), (crate::CUFRAMES_ERR_WOULD_BLOCK, null_mut()));
        cuframes_cuda_subscriber_destroy(subscriber);
        cuframes_cuda_publisher_destroy(publisher);
    }
}

#[test]
fn gpu_round_trip_ipc() {
    if gpu() {
        round_trip(CUFRAMES_CUDA_EXPORT_IPC);
    } else {
        eprintln!("skipped: set CUFRAMES_GPU=1 (a GPU, or scripts/cuda-sim.sh)");
    }
}

#[test]
fn gpu_round_trip_vmm_fd() {
    if gpu() {
        round_trip(CUFRAMES_CUDA_EXPORT_VMM_FD);
    } else {
        eprintln!("skipped: set CUFRAMES_GPU=1 (a GPU, or scripts/cuda-sim.sh)");
    }
}

#[test]
fn gpu_wrong_device_is_a_cuda_error() {
    if !gpu() {
        return;
    }
    shm_dir();
    let key = key("dev");
    let mut o = std::mem::MaybeUninit::uninit();
    cuframes_cuda_publisher_options_init(o.as_mut_ptr());
    // SAFETY: initialised by the call above.
    let mut o = unsafe { o.assume_init() };
    o.device = 9999;
    let mut publisher = null_mut();
    // SAFETY: valid pointers.
    let rc = unsafe { cuframes_cuda_publisher_create(key.as_ptr(), 1, 64, 48, &o, &mut publisher) };
    assert_eq!(rc, CUFRAMES_ERR_CUDA);
    assert!(publisher.is_null());
    assert!(last_error().contains("device 9999"), "{}", last_error());
}
