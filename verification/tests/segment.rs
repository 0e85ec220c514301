//! The ring over a real segment image: a planned header in a page-aligned
//! heap buffer, cut up by `Ring::from_segment` (the one `unsafe` entry of
//! the core), with slot data read and written through raw pointers as the
//! std layer does over a mapping. Meant for miri as much as for the normal
//! test run:
//!
//! ```text
//! cargo +nightly miri test -p cuframes-verification --test segment
//! ```
//!
//! Under miri the threaded test is a data-race check of the lease protocol
//! on the real (non-loom) atomics: the payload bytes are plain memory, so
//! a reader reading a slot the writer writes (or the reverse) is reported
//! as a data race.
#![cfg(not(loom))]

use cuframes_core::*;
use cuframes_verification::request;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use zerocopy::IntoBytes;

/// A zeroed, page-aligned segment image holding a planned header.
struct Image {
    base: *mut u8,
    layout: Layout,
    info: SegmentInfo,
}

// SAFETY: the image is plain memory; every concurrent access to it goes
// through atomics (live structures) or is ordered by the lease protocol
// (slot data), which is exactly what these tests (and miri) check.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    fn new(policy: LosslessPolicy) -> Self {
        let frame = FrameLayout::new(PixelFormat::Gray8, 8, 4, 8).expect("layout");
        let params = RingParams {
            slot_count: 4,
            subscriber_capacity: 2,
            policy,
            block_timeout_ns: 0,
        };
        let header = SegmentHeader::plan(&frame, &params, &Backend::HOST, &Identity::default())
            .expect("plan");
        let len = header.segment_len as usize;
        let layout = Layout::from_size_align(len, PAGE as usize).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        let bytes = header.as_bytes();
        // SAFETY: `base` is valid for `len >= 384` bytes and nothing else
        // refers to it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, bytes.len()) };
        // SAFETY: as above; the slice is dropped before any atomic access.
        let info = SegmentInfo::validate(unsafe { std::slice::from_raw_parts(base, len) })
            .expect("planned segment validates");
        Self { base, layout, info }
    }

    fn ring(&self) -> Ring<'_> {
        // SAFETY: `base` maps `segment_len` bytes, page aligned, for the
        // life of `self`; `info` is its validation; no `&mut` or `&[u8]` is
        // formed over the live regions after this point.
        unsafe { Ring::from_segment(self.base, &self.info) }
    }

    /// Raw pointer to slot `slot`'s data and its length.
    fn slot(&self, slot: u32) -> (*mut u8, usize) {
        let (start, end) = self.info.host_slot_range(slot).expect("host slot");
        // SAFETY: validation put every host slot range inside the segment.
        (
            unsafe { self.base.add(start as usize) },
            (end - start) as usize,
        )
    }

    /// Fills a loaned slot with `seq`'s low byte.
    fn fill(&self, slot: u32, seq: u64) {
        let (p, n) = self.slot(slot);
        // SAFETY: the caller holds the write grant for `slot`: no reader
        // holds it, so nothing else touches these bytes.
        unsafe { std::ptr::write_bytes(p, seq as u8, n) };
    }

    /// Checks a held slot carries `seq` in every byte.
    fn check(&self, slot: u32, seq: u64) {
        let (p, n) = self.slot(slot);
        // SAFETY: the caller holds a read grant for `slot`: the writer does
        // not write it until the grant is released.
        let data = unsafe { std::slice::from_raw_parts(p, n) };
        assert!(
            data.iter().all(|&b| b == seq as u8),
            "slot {slot} torn for seq {seq}"
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; every `Ring` over it
        // borrowed `self` and is gone.
        unsafe { dealloc(self.base, self.layout) };
    }
}

#[test]
fn ring_over_a_segment_image() {
    let img = Image::new(LosslessPolicy::Block);
    let ring = img.ring();
    assert_eq!((ring.slot_count(), ring.subscriber_capacity()), (4, 2));
    let mut w = Writer::new(&ring);
    let q = Subscription::register(&ring, &request(Mode::Queue, 1, b"q")).expect("register");
    for _ in 0..3 {
        let g = w.try_loan().expect("loan");
        img.fill(g.slot(), g.seq());
        g.commit(0, 0);
    }
    for seq in 1..=3 {
        let f = q.try_read().expect("frame");
        assert_eq!(f.seq(), seq);
        img.check(f.slot(), f.seq());
    }
    drop(q);
    assert!(ring.stats().active().next().is_none());
}

/// A writer and two readers (newest-only and lossless) on threads, over
/// the segment image. Every frame a reader holds must carry its seq.
fn threaded(policy: LosslessPolicy) {
    let frames: u64 = if cfg!(miri) { 12 } else { 2000 };
    let img = Image::new(policy);
    let ring = img.ring();
    let newest = ring
        .register(&request(Mode::NewestOnly, 1, b"newest"))
        .expect("register");
    let queue = ring
        .register(&request(Mode::Queue, 1, b"queue"))
        .expect("register");
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut w = Writer::new(&ring);
            let mut seq = 1;
            while seq <= frames {
                match w.try_loan() {
                    Ok(g) => {
                        assert_eq!(g.seq(), seq);
                        img.fill(g.slot(), seq);
                        g.commit(0, 0);
                        seq += 1;
                    }
                    Err(LoanError::Backpressure | LoanError::Full) => std::thread::yield_now(),
                    Err(e) => panic!("loan: {e:?}"),
                }
            }
            w.close();
        });
        for (token, mode) in [(&newest, Mode::NewestOnly), (&queue, Mode::Queue)] {
            let (ring, img) = (&ring, &img);
            s.spawn(move || {
                let (mut last, mut count) = (0, 0u64);
                loop {
                    match ReadGrant::acquire(ring, token) {
                        Ok(f) => {
                            assert!(f.seq() > last);
                            if mode == Mode::Queue && policy == LosslessPolicy::Block {
                                assert_eq!(f.seq(), last + 1, "lossless under Block");
                            }
                            img.check(f.slot(), f.seq());
                            last = f.seq();
                            count += 1;
                        }
                        Err(ReadError::WouldBlock) => std::thread::yield_now(),
                        Err(ReadError::Closed) => break,
                        Err(e) => panic!("read: {e:?}"),
                    }
                }
                assert_eq!(last, frames, "{mode:?} reader ends on the last frame");
                assert!(count >= 1);
            });
        }
    });
    ring.deregister(newest);
    ring.deregister(queue);
    for (i, s) in ring.slots().iter().enumerate() {
        assert_eq!(s.lease.load(sync::Ordering::SeqCst), 0, "slot {i} leaked");
    }
}

#[test]
fn threads_over_a_segment_image_block() {
    threaded(LosslessPolicy::Block);
}

#[test]
fn threads_over_a_segment_image_drop_oldest() {
    threaded(LosslessPolicy::DropOldest);
}
