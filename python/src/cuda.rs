//! The few CUDA driver calls the binding makes itself, around a
//! `cuframes_cuda::CudaPublisher`: ordering other streams (a DLPack
//! consumer's, a producer's) before or after the publisher's stream with
//! local events, uploading a host image, and telling when enqueued work is
//! done. They are `cuframes_cuda::raw`'s (the same checked calls and run-time
//! loaded driver as the publisher); used only once a CUDA publisher exists,
//! so the driver is loaded and initialised. Streams are the handles DLPack
//! gives, as integers.

pub use cuframes_cuda::raw::{Device, Event, PER_THREAD_STREAM};
use cuframes_cuda::RawStream;
use std::sync::Arc;

/// Whether two stream handles name the same stream: null and
/// `CU_STREAM_LEGACY` (1) are both the legacy default stream.
pub fn same_stream(a: usize, b: usize) -> bool {
    a == b || (a <= 1 && b <= 1)
}

/// Makes stream `later` wait (on the GPU) for the work enqueued on
/// `earlier` so far, through a fresh local event; nothing when they are
/// the same stream.
pub fn order_after(dev: &Arc<Device>, earlier: usize, later: usize) -> cuframes::Result<()> {
    if same_stream(earlier, later) {
        return Ok(());
    }
    cuframes_cuda::raw::order_after(dev, earlier as RawStream, later as RawStream)
}
