//! Tests that need no GPU: the missing-driver path, segments that claim
//! CUDA memory, backend-area validation against hostile bytes.

use cuframes::core::Backend;
use cuframes::{
    ErrorCode, FrameLayout, MemoryKind, Mode, PixelFormat, Publisher, PublisherOptions, Subscriber,
    SubscriberOptions,
};
use cuframes_cuda::*;
use std::time::Duration;
use zerocopy::IntoBytes;

fn setup() {
    let dir = std::env::temp_dir().join(format!("cuframes-cuda-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("CUFRAMES_SHM_DIR", &dir);
}

#[test]
fn no_driver_is_a_cuda_error_not_a_panic() {
    setup();
    let r = CudaPublisher::create(
        "nodrv",
        PixelFormat::Nv12,
        64,
        48,
        CudaPublisherOptions::default(),
    );
    match driver_version() {
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::Cuda);
            assert!(e.message().contains("libcuda"), "{e}");
            let pe = r.unwrap_err();
            assert_eq!(pe.code(), ErrorCode::Cuda);
            assert!(pe.message().contains("libcuda"), "{pe}");
            assert!(!is_available());
            assert_eq!(device_count().unwrap_err().code(), ErrorCode::Cuda);
        }
        // A machine with a driver: creation may work (or fail on a device
        // without memory); either way no panic got here.
        Ok(v) => assert!(v > 0),
    }
}

#[test]
fn invalid_device_index() {
    setup();
    let opts = CudaPublisherOptions {
        device: 9999,
        ..Default::default()
    };
    let e = CudaPublisher::create("baddev", PixelFormat::Gray8, 64, 48, opts).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Cuda);
    assert!(
        e.message().contains("9999") || e.message().contains("libcuda"),
        "{e}"
    );
    // No stream was left behind.
    assert_eq!(
        Subscriber::connect(
            "baddev",
            "s",
            Mode::Queue,
            SubscriberOptions {
                connect_timeout: Duration::ZERO,
                ..Default::default()
            }
        )
        .unwrap_err()
        .code(),
        ErrorCode::NotFound
    );
}

#[test]
fn bad_arguments_are_refused_before_the_driver() {
    setup();
    let opts = CudaPublisherOptions {
        pitch_align: 64,
        ..Default::default()
    };
    let e = CudaPublisher::create("badalign", PixelFormat::Gray8, 64, 48, opts).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let layout = FrameLayout::new(PixelFormat::Gray8, 100, 10, 64).unwrap();
    let e = CudaPublisher::create_with_layout("badlayout", layout, Default::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    let e = CudaPublisher::create("bad/key", PixelFormat::Gray8, 64, 48, Default::default())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
}

/// A well-formed area for a ring of `slots` slots and `cap` subscribers.
fn valid_area(mode: ExportMode, slots: u32, cap: u32, layout: &FrameLayout) -> Vec<u8> {
    let stride = (layout.slot_bytes + 4095) & !4095;
    let mut h = AreaHeader::plan(mode, slots, cap, stride, 512, 0, [7; 16]);
    h.alloc_bytes = stride * u64::from(slots);
    if mode == ExportMode::Ipc {
        h.mem_handle = [0xab; 64];
    }
    let mut v = vec![0u8; h.area_len as usize];
    v[..256].copy_from_slice(h.as_bytes());
    v
}

fn cuda_stream(key: &str, mode: ExportMode, area: &[u8]) -> Publisher {
    let layout = FrameLayout::new(PixelFormat::Nv12, 64, 48, 512).unwrap();
    let stride = (layout.slot_bytes + 4095) & !4095;
    let backend = Backend {
        memory: mode.memory_kind(),
        len: Some(area.len().max(4096) as u64),
        slot_stride: stride,
        device_uuid: [7; 16],
        device_ordinal: 0,
    };
    let opts = PublisherOptions {
        slot_count: 4,
        subscriber_capacity: 4,
        ..Default::default()
    };
    Publisher::create_with_backend(key, layout, opts, backend, |dst| {
        dst[..area.len()].copy_from_slice(area);
        Ok(())
    })
    .unwrap()
}

#[test]
fn host_subscriber_refuses_a_cuda_stream() {
    setup();
    let layout = FrameLayout::new(PixelFormat::Nv12, 64, 48, 512).unwrap();
    for (key, mode) in [
        ("claim-ipc", ExportMode::Ipc),
        ("claim-vmm", ExportMode::VmmFd),
    ] {
        let area = valid_area(mode, 4, 4, &layout);
        let p = cuda_stream(key, mode, &area);
        let e = Subscriber::connect(key, "host", Mode::Queue, Default::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Incompatible, "{e}");
        // The std publisher refuses host writes into device memory too.
        let mut p = p;
        assert_eq!(
            p.publish_from(&[0u8; 64 * 48 * 3 / 2], 0)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidArgument
        );
        // The area reads back as that mode.
        let (ptr, len) = p.backend_area();
        // SAFETY: the publisher keeps its backend area mapped.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        assert_eq!(export_mode(mode.memory_kind(), &bytes).unwrap(), Some(mode));
        assert_eq!(parse_area(&bytes).unwrap().mode.name(), mode.name());
        // A CUDA subscriber gets past validation, then needs a driver
        // (here) or the publisher's real memory (on a GPU machine: the
        // fabricated handle or the missing socket fails).
        let opts = CudaSubscriberOptions {
            ring: SubscriberOptions {
                connect_timeout: Duration::from_millis(50),
                ..Default::default()
            },
            device: None,
        };
        let e = CudaSubscriber::connect(key, "gpu", Mode::Queue, opts).unwrap_err();
        assert!(
            matches!(
                e.code(),
                ErrorCode::Cuda | ErrorCode::NotFound | ErrorCode::Io
            ),
            "{e}"
        );
    }
}

#[test]
fn cuda_subscriber_refuses_a_host_stream() {
    setup();
    let layout = FrameLayout::new(PixelFormat::Gray8, 64, 48, 64).unwrap();
    let _p = Publisher::create("plainhost", layout, Default::default()).unwrap();
    let e =
        CudaSubscriber::connect("plainhost", "gpu", Mode::Queue, Default::default()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
}

#[test]
fn cuda_subscriber_refuses_a_hostile_area() {
    setup();
    let layout = FrameLayout::new(PixelFormat::Nv12, 64, 48, 512).unwrap();
    let mut area = valid_area(ExportMode::Ipc, 4, 4, &layout);
    area[40] ^= 0xff; // device uuid no longer the segment's
    let _p = cuda_stream("hostile-uuid", ExportMode::Ipc, &area);
    let e = CudaSubscriber::connect("hostile-uuid", "gpu", Mode::Queue, Default::default())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");

    let mut area = valid_area(ExportMode::Ipc, 4, 4, &layout);
    area[0] = b'X';
    let _q = cuda_stream("hostile-magic", ExportMode::Ipc, &area);
    let e = CudaSubscriber::connect("hostile-magic", "gpu", Mode::Queue, Default::default())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");

    // Slot count that disagrees with the ring's.
    let area = valid_area(ExportMode::Ipc, 5, 4, &layout);
    let _r = cuda_stream("hostile-slots", ExportMode::Ipc, &area);
    let e = CudaSubscriber::connect("hostile-slots", "gpu", Mode::Queue, Default::default())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");
}

fn set_u32(v: &mut [u8], off: usize, x: u32) {
    v[off..off + 4].copy_from_slice(&x.to_ne_bytes());
}
fn set_u64(v: &mut [u8], off: usize, x: u64) {
    v[off..off + 8].copy_from_slice(&x.to_ne_bytes());
}

#[test]
fn area_validation_cases() {
    let layout = FrameLayout::new(PixelFormat::Nv12, 64, 48, 512).unwrap();
    let good = valid_area(ExportMode::VmmFd, 4, 4, &layout);
    let info = parse_area(&good).unwrap();
    assert_eq!(info.mode, ExportMode::VmmFd);
    assert_eq!(info.mode.name(), "vmm-fd");
    assert_eq!(ExportMode::Ipc.name(), "ipc");
    // The sync region starts a page in: 4 publish counters (one cache
    // line), then 4 rows of 4 requested + 4 done counters.
    assert_eq!(info.header.sync_offset, SYNC_OFFSET);
    assert_eq!(info.header.release_offset, 4096 + 64);
    assert_eq!(info.header.release_stride, 64);
    assert_eq!(info.header.sync_len, 4096);
    assert_eq!(info.header.area_len, 8192);

    type Case = (fn(&mut Vec<u8>), ErrorCode);
    let cases: &[Case] = &[
        (|v| v.truncate(100), ErrorCode::Corrupt),
        (|v| v[3] = 0, ErrorCode::Corrupt),
        (|v| set_u32(v, 8, 1), ErrorCode::Incompatible), // the event-based layout
        (|v| set_u32(v, 8, 3), ErrorCode::Incompatible),
        (|v| set_u32(v, 12, 255), ErrorCode::Corrupt),
        (|v| set_u32(v, 16, 1), ErrorCode::Corrupt), // host is no export mode
        (|v| set_u32(v, 16, 77), ErrorCode::Corrupt),
        (|v| set_u32(v, 20, 1), ErrorCode::Incompatible), // unknown flag
        (|v| set_u32(v, 28, 0), ErrorCode::Corrupt),
        (|v| set_u32(v, 28, 65), ErrorCode::Corrupt),
        (|v| set_u64(v, 48, 1), ErrorCode::Corrupt), // allocation too small
        (|v| set_u64(v, 56, u64::MAX - 511), ErrorCode::Corrupt), // stride overflow
        (|v| set_u64(v, 56, 100), ErrorCode::Corrupt), // unaligned stride
        (|v| set_u32(v, 64, 0), ErrorCode::Corrupt),
        (|v| set_u32(v, 64, 64), ErrorCode::Corrupt),
        (|v| set_u32(v, 68, 300), ErrorCode::Corrupt),
        (|v| set_u32(v, 68, 128), ErrorCode::Corrupt),
        (|v| set_u64(v, 72, 8), ErrorCode::Corrupt), // sync region over the header
        (|v| set_u64(v, 72, u64::MAX - 10), ErrorCode::Corrupt),
        (|v| set_u64(v, 80, 4096), ErrorCode::Corrupt), // releases over publishes
        (|v| set_u64(v, 80, u64::MAX - 63), ErrorCode::Corrupt),
        (|v| set_u64(v, 88, 128), ErrorCode::Corrupt),
        (|v| set_u64(v, 96, 1 << 40), ErrorCode::Corrupt), // longer than the bytes
        (|v| set_u64(v, 104, 0), ErrorCode::Corrupt),      // no sync region
        (|v| set_u64(v, 104, 1 << 20), ErrorCode::Corrupt),
        (|v| v[128] = 1, ErrorCode::Corrupt), // a handle in vmm mode
    ];
    for (i, (corrupt, want)) in cases.iter().enumerate() {
        let mut v = good.clone();
        corrupt(&mut v);
        let e = parse_area(&v).unwrap_err();
        assert_eq!(e.code(), *want, "case {i}: {e}");
    }
    // IPC mode needs its handle.
    let mut ipc = valid_area(ExportMode::Ipc, 4, 4, &layout);
    assert!(parse_area(&ipc).is_ok());
    ipc[128..192].fill(0);
    assert_eq!(parse_area(&ipc).unwrap_err().code(), ErrorCode::Corrupt);
    // A kind that disagrees with the area.
    assert_eq!(
        export_mode(MemoryKind::CudaIpc, &good).unwrap_err().code(),
        ErrorCode::Corrupt
    );
}

#[test]
fn area_fuzz_never_panics() {
    let layout = FrameLayout::new(PixelFormat::P010, 96, 64, 512).unwrap();
    let good = valid_area(ExportMode::Ipc, 8, 16, &layout);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut v = good.clone();
        for _ in 0..(next() % 6 + 1) {
            let at = (next() % 256) as usize;
            v[at] = next() as u8;
        }
        if next() % 8 == 0 {
            v.truncate((next() % v.len() as u64) as usize);
        }
        match parse_area(&v) {
            Ok(info) => assert!(info.header.area_len <= v.len() as u64),
            Err(e) => assert!(matches!(
                e.code(),
                ErrorCode::Corrupt | ErrorCode::Incompatible
            )),
        }
    }
    // Random bytes of every small length.
    for len in 0..600 {
        let v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        assert!(parse_area(&v).is_err());
    }
}
