//! # cuframes-cuda
//!
//! The CUDA backend of cuframes: a publisher keeps its ring of frames in
//! one GPU allocation and subscribers in other processes read them in
//! place, as device pointers, with ordering done on the GPU through
//! counters in the shared segment that GPU streams write and wait on (no
//! CPU synchronisation per frame, no IPC events: it works across pid
//! namespaces).
//!
//! - [`CudaPublisher`]: allocates every slot at once (planes pitched for
//!   NVDEC/NPP), exports the memory either as a legacy IPC handle in the
//!   segment or as a VMM allocation whose file descriptor is passed over a
//!   unix socket (see [`fdpass`]), and writes frames from host memory
//!   ([`CudaPublisher::publish_from_host`]) or in place
//!   ([`CudaPublisher::loan`]).
//! - [`CudaSubscriber`]: opens the memory and the events once, then
//!   [`next_frame`](CudaSubscriber::next_frame) returns a [`CudaFrame`]
//!   and makes the consumer stream wait for the frame's writes.
//!
//! The driver is loaded at run time: this crate builds and its host-side
//! tests pass on machines without CUDA, where every entry point returns an
//! [`ErrorCode::Cuda`](cuframes::ErrorCode::Cuda) error naming the cause.
//!
//! ```
//! use cuframes::PixelFormat;
//! use cuframes_cuda::{CudaPublisher, CudaPublisherOptions};
//! match CudaPublisher::create("doc-gpu", PixelFormat::Nv12, 64, 48, CudaPublisherOptions::default()) {
//!     Ok(p) => println!("publishing on GPU {} ({})", p.device(), p.export_mode()),
//!     Err(e) => assert_eq!(e.code(), cuframes::ErrorCode::Cuda), // no GPU here
//! }
//! ```
//!
//! Byte layout of the backend area and the ordering protocol:
//! `docs/cuda.md`.
#![deny(missing_docs)]

mod area;
mod driver;
pub mod fdpass;
mod memory;
mod publisher;
mod subscriber;

pub use area::{
    parse_area, AreaHeader, AreaInfo, ExportMode, AREA_MAGIC, AREA_VERSION, SYNC_OFFSET,
};
pub use driver::{
    device_count, device_name, driver_version, is_available, is_simulator, DevicePtr, RawStream,
};
/// The few raw driver-API pieces the language bindings use around a
/// [`CudaPublisher`] (ordering a DLPack consumer's stream before or after
/// the publisher's, uploading a host image, telling when enqueued work is
/// done): the same checked calls, retained primary context and local
/// events this crate uses itself, through the same run-time loaded driver.
///
/// Open the [`Device`](raw::Device) only once [`driver_version`] (or a
/// publisher) succeeded; every call returns an
/// [`ErrorCode::Cuda`](cuframes::ErrorCode::Cuda) error naming the call and
/// the driver's name for the failure.
///
/// ```
/// use cuframes_cuda::raw::{self, Device, RawStream};
/// if let Ok(dev) = Device::open(0) {
///     let (producer, consumer) = (raw::PER_THREAD_STREAM as RawStream, std::ptr::null_mut());
///     // The consumer's stream waits (on the GPU) for the producer's work so far.
///     raw::order_after(&dev, producer, consumer)?;
/// }
/// # Ok::<(), cuframes::Error>(())
/// ```
pub mod raw {
    pub use crate::driver::{
        is_page_locked, order_after, CtxGuard, Device, DevicePtr, Event, RawStream,
        PER_THREAD_STREAM,
    };
}
pub use publisher::{
    CudaDetachedLease, CudaPublisher, CudaPublisherOptions, CudaWriteLease, DevicePlane,
    ExportRequest,
};
pub use subscriber::{CudaFrame, CudaSubscriber, CudaSubscriberOptions};

/// The export mode of a CUDA stream, from its segment's memory kind and
/// backend area (validated): what `cuframes ls` shows. `Ok(None)` for a
/// host-memory stream.
///
/// ```
/// use cuframes::MemoryKind;
/// assert_eq!(cuframes_cuda::export_mode(MemoryKind::Host, &[]).unwrap(), None);
/// assert!(cuframes_cuda::export_mode(MemoryKind::CudaIpc, &[0u8; 512]).is_err());
/// ```
pub fn export_mode(
    memory: cuframes::MemoryKind,
    backend_area: &[u8],
) -> cuframes::Result<Option<ExportMode>> {
    if memory == cuframes::MemoryKind::Host {
        return Ok(None);
    }
    let info = parse_area(backend_area)?;
    if info.mode.memory_kind() != memory {
        return Err(cuframes::Error::new(
            cuframes::ErrorCode::Corrupt,
            "CUDA backend area: export mode differs from the segment's memory kind",
        ));
    }
    Ok(Some(info.mode))
}
