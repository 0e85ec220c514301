//! The sink's ring, shared with the buffer pool it proposes upstream, and
//! that pool: its buffers are the ring's slots.
//!
//! A buffer acquired from the pool is a detached loan of the publisher
//! (`Publisher::loan_detached`): its memory is the slot itself in shared
//! memory, described by a `GstVideoMeta` with the ring's plane offsets and
//! pitches. Upstream writes the picture straight into the slot; when the
//! buffer reaches `render`, the sink commits the loan (nothing is copied).
//! A publisher has one loan at a time, so the pool hands out a loan only
//! when no other buffer of it is alive (loaned or not); otherwise, or when
//! upstream cannot honour the ring's strides, it hands out a plain buffer
//! in system memory, which the sink copies. A rendered buffer may outlive
//! its render (a `tee` branch, a probe, `last-sample`): the sink retains
//! its slot ([`Publisher::retain_newest`]) until the buffer's memory is
//! freed, so its bytes never change under whoever still holds it. A loaned
//! buffer freed without being rendered gives its slot back.

use crate::common::{is_default_layout, meta_planes, CAT};
use cuframes::{FrameLayout, MappingGuard, PacketPublisher, Publisher, Retention};
use cuframes_cuda::CudaPublisher;
use gst::glib;
use gst::subclass::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the sink publishes into.
#[derive(Default)]
pub(crate) enum Target {
    #[default]
    None,
    Host(Publisher),
    Cuda(Box<CudaPublisher>),
    Packets(PacketPublisher),
}

/// A loan handed to a pool buffer and not yet committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingLoan {
    pub generation: u64,
    pub seq: u64,
    pub data: usize,
    pub len: usize,
}

/// What a loaned buffer's memory and the sink share about its slot; never
/// locked across a wait, so freeing the buffer on any thread is prompt.
#[derive(Default)]
pub(crate) struct LoanTicket {
    /// Set by the render that committed the loan.
    committed: AtomicBool,
    /// The committed slot's hold, dropped with the memory.
    retention: Mutex<Option<Retention>>,
}

impl LoanTicket {
    /// The loan was published; `retention` keeps its slot until the
    /// memory goes.
    pub fn committed(&self, retention: Option<Retention>) {
        *self.retention.lock().unwrap_or_else(|e| e.into_inner()) = retention;
        self.committed.store(true, Ordering::Release);
    }
}

#[derive(Default)]
pub(crate) struct RingState {
    pub target: Target,
    /// Bumped whenever the target is replaced (caps change, stop).
    pub generation: u64,
    pub pending: Option<(PendingLoan, Arc<LoanTicket>)>,
}

impl RingState {
    /// Replaces the target; a pending loan dies with the old one.
    pub fn replace(&mut self, target: Target) {
        self.pending = None;
        self.generation += 1;
        self.target = target;
    }
}

/// The sink's ring and the pool's view of it.
#[derive(Default)]
pub(crate) struct Shared {
    state: Mutex<RingState>,
    /// Pool buffers alive (loans and plain ones).
    pub outstanding: AtomicUsize,
    /// Loans handed out by the pool, and plain buffers (statistics).
    pub pool_loans: AtomicU64,
    pub pool_plain: AtomicU64,
    /// Bumped by the sink's `unlock` (pause, flush, stop) and the pool's
    /// `flush_start`: a loan waiting in the pool gives up. A count, not a
    /// flag: `unlock_stop` follows a pause's `unlock` at once.
    pub interrupts: AtomicU64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, RingState> {
        // A panic elsewhere must not wedge every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The memory of a loaned slot.
struct LoanMemory {
    data: *mut u8,
    len: usize,
    loan: PendingLoan,
    ticket: Arc<LoanTicket>,
    shared: Arc<Shared>,
    // Keeps the slot mapped even after the publisher is gone.
    _guard: MappingGuard,
}

// SAFETY: the pointer is into a shared-memory mapping that `_guard` keeps
// alive wherever the memory goes; who may write it is governed by the
// pending loan, not by the thread that holds the memory.
unsafe impl Send for LoanMemory {}

impl AsMut<[u8]> for LoanMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the detached loan makes these `len` bytes of the slot the
        // writer's alone until it is committed or aborted; the mapping is
        // kept by `_guard`; GStreamer hands this slice out through its own
        // map locking.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}

impl Drop for LoanMemory {
    fn drop(&mut self) {
        if self.ticket.committed.load(Ordering::Acquire) {
            // Published: the slot is the ring's again (the retention wakes
            // a loan waiting for it, without the ring's lock).
            drop(
                self.ticket
                    .retention
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
        } else {
            let mut st = self.shared.lock();
            if st.pending.as_ref().map(|(l, _)| *l) == Some(self.loan) {
                st.pending = None;
                if let Target::Host(p) = &mut st.target {
                    p.abort_detached();
                }
                gst::debug!(
                    CAT,
                    "a loaned buffer was freed without being rendered: slot given back"
                );
            }
        }
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A plain pool buffer's memory.
struct PlainMemory {
    bytes: Vec<u8>,
    shared: Arc<Shared>,
}

impl AsMut<[u8]> for PlainMemory {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for PlainMemory {
    fn drop(&mut self) {
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a pool is for: one ring generation and its layout.
#[derive(Clone)]
pub(crate) struct PoolSetup {
    pub shared: Arc<Shared>,
    pub generation: u64,
    pub layout: FrameLayout,
    pub info: gst_video::VideoInfo,
}

glib::wrapper! {
    pub struct SlotPool(ObjectSubclass<imp::SlotPool>) @extends gst::BufferPool, gst::Object;
}

impl SlotPool {
    pub(crate) fn new(setup: PoolSetup) -> Self {
        let pool: Self = glib::Object::new();
        *pool.imp().setup.lock().unwrap_or_else(|e| e.into_inner()) = Some(setup);
        pool
    }
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct SlotPool {
        pub(super) setup: Mutex<Option<PoolSetup>>,
        /// Upstream set `GST_BUFFER_POOL_OPTION_VIDEO_META`: it honours the
        /// ring's strides.
        video_meta: std::sync::atomic::AtomicBool,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for SlotPool {
        const NAME: &'static str = "GstCuframesSlotPool";
        type Type = super::SlotPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for SlotPool {}
    impl GstObjectImpl for SlotPool {}

    impl BufferPoolImpl for SlotPool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: [&str; 1] = [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()];
            &OPTIONS
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            self.video_meta.store(meta, Ordering::Relaxed);
            gst::debug!(CAT, imp = self, "configured, video meta: {meta}");
            self.parent_set_config(config)
        }

        fn start(&self) -> bool {
            // Nothing to preallocate: every buffer is made on acquire.
            true
        }

        fn acquire_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let setup = self
                .setup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or(gst::FlowError::NotNegotiated)?;
            let buffer = match self.loan(&setup) {
                Some(b) => b,
                None => plain(&setup, self.video_meta.load(Ordering::Relaxed)),
            };
            Ok(buffer)
        }

        fn release_buffer(&self, buffer: gst::Buffer) {
            // Never reused: a slot loaned once is the ring's afterwards.
            // Dropping the buffer frees its memory (and with a loan never
            // rendered, gives the slot back).
            drop(buffer);
        }

        fn reset_buffer(&self, _buffer: &mut gst::BufferRef) {}

        fn flush_start(&self) {
            if let Some(setup) = &*self.setup.lock().unwrap_or_else(|e| e.into_inner()) {
                setup.shared.interrupts.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    impl SlotPool {
        /// A buffer over a freshly loaned slot, or `None` when a loan
        /// cannot be had now (see the module comment).
        fn loan(&self, setup: &PoolSetup) -> Option<gst::Buffer> {
            let shared = &setup.shared;
            if !self.video_meta.load(Ordering::Relaxed)
                && !is_default_layout(&setup.layout, &setup.info)
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "upstream does not take GstVideoMeta and the ring's strides differ: plain buffer"
                );
                return None;
            }
            // Before the lock: an unlock while this waits for the lock
            // counts too.
            let at = shared.interrupts.load(Ordering::Acquire);
            let mut st = shared.lock();
            if shared.outstanding.load(Ordering::Acquire) > 0
                || st.pending.is_some()
                || st.generation != setup.generation
            {
                return None;
            }
            let generation = st.generation;
            let Target::Host(publisher) = &mut st.target else {
                return None;
            };
            if publisher.layout() != &setup.layout {
                return None;
            }
            // Upstream's thread waits here for a slot (a lossless reader
            // behind), until a pause, flush or stop interrupts it: then a
            // plain buffer, which the sink can preroll on.
            let lease = match publisher
                .loan_detached_unless(|| shared.interrupts.load(Ordering::Acquire) != at)
            {
                Ok(l) if !l.data.is_null() => l,
                Ok(_) => {
                    publisher.abort_detached();
                    return None;
                }
                Err(e) => {
                    gst::debug!(CAT, imp = self, "no loan for the pool: {e}");
                    return None;
                }
            };
            let loan = PendingLoan {
                generation,
                seq: lease.seq,
                data: lease.data as usize,
                len: lease.len,
            };
            let guard = publisher.mapping_guard();
            let ticket = Arc::new(LoanTicket::default());
            st.pending = Some((loan, ticket.clone()));
            shared.outstanding.fetch_add(1, Ordering::AcqRel);
            drop(st);
            shared.pool_loans.fetch_add(1, Ordering::Relaxed);
            gst::trace!(
                CAT,
                imp = self,
                "loaned slot {} (seq {})",
                lease.slot,
                lease.seq
            );
            let mut buffer = gst::Buffer::from_mut_slice(LoanMemory {
                data: lease.data,
                len: lease.len,
                loan,
                ticket,
                shared: shared.clone(),
                _guard: guard,
            });
            add_meta(buffer.get_mut().expect("a new buffer"), setup);
            Some(buffer)
        }
    }

    /// A buffer in system memory: with the ring's layout (and its meta)
    /// for an upstream that takes `GstVideoMeta`, else GStreamer's default
    /// layout for the caps, which is all such an upstream can write.
    fn plain(setup: &PoolSetup, video_meta: bool) -> gst::Buffer {
        let shared = &setup.shared;
        shared.outstanding.fetch_add(1, Ordering::AcqRel);
        shared.pool_plain.fetch_add(1, Ordering::Relaxed);
        let size = if video_meta {
            setup.layout.slot_bytes as usize
        } else {
            setup.info.size()
        };
        let mut buffer = gst::Buffer::from_mut_slice(PlainMemory {
            bytes: vec![0; size],
            shared: shared.clone(),
        });
        if video_meta {
            add_meta(buffer.get_mut().expect("a new buffer"), setup);
        }
        buffer
    }

    fn add_meta(buffer: &mut gst::BufferRef, setup: &PoolSetup) {
        let (offsets, strides) = meta_planes(&setup.layout);
        let _ = gst_video::VideoMeta::add_full(
            buffer,
            gst_video::VideoFrameFlags::empty(),
            setup.info.format(),
            setup.info.width(),
            setup.info.height(),
            &offsets,
            &strides,
        );
    }
}
