//! Streams whose frames live outside the segment (GPU memory): the backend
//! area is written before the stream is visible, host-only subscribers are
//! refused, and host byte access is never handed out.

use cuframes::core::{Backend, MemoryKind};
use cuframes::*;
use std::time::Duration;

fn shm() {
    std::env::set_var("CUFRAMES_SHM_DIR", std::env::temp_dir());
}

fn device_stream(key: &str) -> Publisher {
    shm();
    let layout = FrameLayout::new(PixelFormat::Nv12, 64, 32, 512).unwrap();
    let backend = Backend {
        memory: MemoryKind::CudaIpc,
        len: Some(4096),
        slot_stride: 65536,
        ..Backend::HOST
    };
    Publisher::create_with_backend(key, layout, Default::default(), backend, |area| {
        area[..4].copy_from_slice(b"HNDL");
        Ok(())
    })
    .unwrap()
}

#[test]
fn host_only_subscriber_is_refused_a_device_stream() {
    let _p = device_stream("backend-refused");
    let err = Subscriber::connect("backend-refused", "host", Mode::Queue, Default::default())
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Incompatible);
    assert!(err.to_string().contains("cuda-ipc"), "{err}");
}

#[test]
fn device_stream_shares_backend_area_and_slots_not_bytes() {
    let mut p = device_stream("backend-device");
    assert_eq!(
        p.loan().err().map(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        p.publish_from(&[0; 64 * 48], 0).err().map(|e| e.code()),
        Some(ErrorCode::InvalidArgument)
    );
    let opts = SubscriberOptions {
        accept_device_memory: true,
        ..Default::default()
    };
    let mut s = Subscriber::connect("backend-device", "gpu", Mode::Queue, opts).unwrap();
    let (area, len) = s.backend_area();
    assert_eq!(len, 4096);
    // SAFETY: the area is `len` bytes inside the live mapping.
    assert_eq!(unsafe { std::slice::from_raw_parts(area, 4) }, b"HNDL");
    let lease = p.loan_detached().unwrap();
    assert!(lease.data.is_null(), "no host bytes for a device slot");
    p.commit_detached(7).unwrap();
    let f = s.next_frame(Duration::from_secs(1)).unwrap();
    assert_eq!(
        (f.seq(), f.slot(), f.pts_ns(), f.memory()),
        (1, lease.slot, 7, MemoryKind::CudaIpc)
    );
    assert!(f.as_ptr().is_null());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.data().len()));
    assert!(
        caught.is_err(),
        "host bytes of a device frame must not be handed out"
    );
}
