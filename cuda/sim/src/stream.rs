//! Streams: a queue of ops run in order by one worker thread per stream,
//! each after a random delay.

use crate::event::{wait_event, EvMem};
use crate::mem::Span;
use crate::util::{self, report_violation, Rng};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SKind {
    /// The legacy default stream of a context (handles 0 and 1).
    Legacy,
    /// CU_STREAM_PER_THREAD (handle 2) of one thread.
    PerThread,
    /// cuStreamCreate.
    User,
}

pub(crate) const NON_BLOCKING: u32 = 1;

pub(crate) enum Src {
    /// Read when the op runs (device or page-locked host memory).
    At(Span),
    /// Pageable host memory, copied (packed rows) when the op was enqueued.
    Snap(Vec<u8>),
}

pub(crate) enum SetVal {
    U8(u8),
    U32(u32),
}

pub(crate) enum Op {
    Copy {
        src: Src,
        dst: Span,
        spitch: usize,
        dpitch: usize,
        width: usize,
        height: usize,
    },
    /// `width` elements per row.
    Set {
        dst: Span,
        pitch: usize,
        width: usize,
        height: usize,
        val: SetVal,
    },
    Record {
        ev: Arc<EvMem>,
        n: u64,
    },
    WaitEvent {
        ev: Arc<EvMem>,
        n: u64,
    },
    WriteValue {
        at: Span,
        value: u64,
        wide: bool,
    },
    WaitValue {
        at: Span,
        value: u64,
        wide: bool,
        cond: u32,
    },
}

struct Item {
    n: u64,
    deps: Vec<(Arc<Stream>, u64)>,
    op: Op,
}

#[derive(Default)]
struct Q {
    ops: VecDeque<Item>,
    enqueued: u64,
    completed: u64,
    closed: bool,
}

pub(crate) struct Stream {
    pub handle: u64,
    pub ctx: usize,
    pub phys: u32,
    pub flags: u32,
    pub kind: SKind,
    q: Mutex<Q>,
    cv: Condvar,
}

impl Stream {
    /// A new stream with its worker thread.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        handle: u64,
        ctx: usize,
        phys: u32,
        flags: u32,
        kind: SKind,
        seed: u64,
        delay_us: u64,
    ) -> Arc<Stream> {
        let s = Arc::new(Stream {
            handle,
            ctx,
            phys,
            flags,
            kind,
            q: Mutex::new(Q::default()),
            cv: Condvar::new(),
        });
        let w = s.clone();
        let rng = Rng::new(seed);
        std::thread::Builder::new()
            .name(format!("cfsim-stream-{handle:x}"))
            .spawn(move || worker(w, rng, delay_us))
            .expect("cuframes-sim: cannot start a stream worker thread");
        s
    }

    /// Whether work on it synchronises with the legacy default stream.
    pub fn blocking(&self) -> bool {
        match self.kind {
            SKind::PerThread => true,
            SKind::User => self.flags & NON_BLOCKING == 0,
            SKind::Legacy => false,
        }
    }

    /// The number of ops enqueued so far, if some have not completed.
    pub fn pending(&self) -> Option<u64> {
        let q = self.q.lock();
        (q.completed < q.enqueued).then_some(q.enqueued)
    }

    pub fn enqueued(&self) -> u64 {
        self.q.lock().enqueued
    }

    pub fn idle(&self) -> bool {
        self.pending().is_none()
    }

    /// Queues `op` after `deps` (stream, op count) are done; its number.
    pub fn enqueue(&self, deps: Vec<(Arc<Stream>, u64)>, op: Op) -> u64 {
        let mut q = self.q.lock();
        q.enqueued += 1;
        let n = q.enqueued;
        q.ops.push_back(Item { n, deps, op });
        self.cv.notify_all();
        n
    }

    /// Blocks until op `n` completed.
    pub fn wait_for(&self, n: u64) {
        let mut q = self.q.lock();
        while q.completed < n {
            self.cv.wait(&mut q);
        }
    }

    /// Destroyed: the worker finishes what is queued, then exits.
    pub fn close(&self) {
        let mut q = self.q.lock();
        q.closed = true;
        self.cv.notify_all();
    }
}

fn worker(s: Arc<Stream>, mut rng: Rng, delay_us: u64) {
    loop {
        let item = {
            let mut q = s.q.lock();
            loop {
                if let Some(i) = q.ops.pop_front() {
                    break i;
                }
                if q.closed {
                    return;
                }
                s.cv.wait(&mut q);
            }
        };
        for (d, n) in &item.deps {
            d.wait_for(*n);
        }
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.upto(delay_us)));
        }
        let handle = s.handle;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(handle, item.op, &mut rng)
        }));
        if r.is_err() {
            eprintln!("cuframes-sim: internal error: an op of stream {handle:#x} panicked");
        }
        let mut q = s.q.lock();
        q.completed = item.n;
        s.cv.notify_all();
    }
}

fn load(at: &Span, wide: bool) -> u64 {
    if wide {
        // SAFETY: 8-aligned (checked at enqueue) and inside live memory kept
        // by `at`; other processes access it atomically too.
        unsafe { AtomicU64::from_ptr(at.ptr.0.cast()) }.load(Ordering::Acquire)
    } else {
        // SAFETY: as above, 4-aligned.
        u64::from(unsafe { AtomicU32::from_ptr(at.ptr.0.cast()) }.load(Ordering::Acquire))
    }
}

/// Whether a stream wait condition (CU_STREAM_WAIT_VALUE_*) holds.
pub(crate) fn satisfied(cur: u64, value: u64, wide: bool, cond: u32) -> bool {
    let mask = if wide { u64::MAX } else { u32::MAX as u64 };
    let (cur, value) = (cur & mask, value & mask);
    match cond {
        // GEQ is a cyclic comparison: (int)(*addr - value) >= 0.
        0 if wide => (cur.wrapping_sub(value) as i64) >= 0,
        0 => ((cur as u32).wrapping_sub(value as u32) as i32) >= 0,
        1 => cur == value,
        2 => cur & value != 0,
        _ => !(cur | value) & mask != 0,
    }
}

fn run(handle: u64, op: Op, rng: &mut Rng) {
    match op {
        Op::Copy {
            src,
            dst,
            spitch,
            dpitch,
            width,
            height,
        } => {
            let (sp, sp_pitch) = match &src {
                Src::At(s) => (s.ptr.0 as *const u8, spitch),
                Src::Snap(v) => (v.as_ptr(), width),
            };
            for row in 0..height {
                // SAFETY: both ranges were checked at enqueue (inside live
                // allocations kept by the spans, or host memory the caller
                // keeps valid until the op completed); memmove semantics
                // for overlapping device copies.
                unsafe {
                    std::ptr::copy(sp.add(row * sp_pitch), dst.ptr.0.add(row * dpitch), width)
                };
            }
        }
        Op::Set {
            dst,
            pitch,
            width,
            height,
            val,
        } => match val {
            SetVal::U8(v) => {
                if let (0, 1, Some((b, off))) = (v, height, dst.backing_offset()) {
                    if b.punch_zero(off, width as u64) {
                        return;
                    }
                }
                for row in 0..height {
                    // SAFETY: checked at enqueue, as for copies.
                    unsafe { std::ptr::write_bytes(dst.ptr.0.add(row * pitch), v, width) };
                }
            }
            SetVal::U32(v) => {
                for row in 0..height {
                    for i in 0..width {
                        // SAFETY: checked at enqueue, as for copies.
                        unsafe {
                            dst.ptr
                                .0
                                .add(row * pitch + i * 4)
                                .cast::<u32>()
                                .write_unaligned(v)
                        };
                    }
                }
            }
        },
        Op::Record { ev, n } => {
            let b = ev.block();
            b.done_ns.store(util::now_ns(), Ordering::Release);
            b.completed.fetch_max(n, Ordering::AcqRel);
        }
        Op::WaitEvent { ev, n } => {
            wait_event(
                &ev,
                n,
                rng,
                &format!("cuStreamWaitEvent (stream {handle:#x})"),
            );
        }
        Op::WriteValue { at, value, wide } => {
            if wide {
                // SAFETY: as in `load`.
                unsafe { AtomicU64::from_ptr(at.ptr.0.cast()) }.store(value, Ordering::Release);
            } else {
                // SAFETY: as in `load`.
                unsafe { AtomicU32::from_ptr(at.ptr.0.cast()) }
                    .store(value as u32, Ordering::Release);
            }
        }
        Op::WaitValue {
            at,
            value,
            wide,
            cond,
        } => {
            let start = Instant::now();
            let (mut told, mut cyclic_told) = (false, false);
            let name = if wide {
                "cuStreamWaitValue64"
            } else {
                "cuStreamWaitValue32"
            };
            loop {
                let cur = load(&at, wide);
                if satisfied(cur, value, wide, cond) {
                    break;
                }
                // A 64-bit GEQ wait that an unsigned comparison would call
                // satisfied but the cyclic one does not (the value is 2^63 or
                // more ahead): a sentinel such as u64::MAX written to release
                // a GEQ wait releases nothing on a GPU.
                if wide && cond == 0 && !cyclic_told && cur > value {
                    cyclic_told = true;
                    report_violation(
                        &format!("{name} (stream {handle:#x})"),
                        &format!(
                            "GEQ wait for {value:#x} sees {cur:#x}: CU_STREAM_WAIT_VALUE_GEQ is a cyclic comparison ((int64_t)(*addr - value) >= 0), so this value never satisfies it; the wait hangs"
                        ),
                    );
                }
                if !told && !cyclic_told && start.elapsed() > util::hang_after() {
                    told = true;
                    report_violation(
                        &format!("{name} (stream {handle:#x})"),
                        &format!(
                            "stream wait never satisfied: waited {:?} for condition {cond} against {value:#x}, value is {cur:#x}",
                            start.elapsed()
                        ),
                    );
                }
                util::poll_sleep(rng);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::satisfied;

    #[test]
    fn wait_conditions() {
        // GEQ is cyclic: (int)(value_at_addr - value) >= 0.
        assert!(satisfied(5, 5, true, 0));
        assert!(satisfied(6, 5, true, 0));
        assert!(!satisfied(4, 5, true, 0));
        assert!(satisfied(1, u64::MAX, true, 0));
        assert!(satisfied(1, u32::MAX as u64, false, 0));
        assert!(!satisfied(u32::MAX as u64, 1, false, 0));
        // EQ, AND, NOR.
        assert!(satisfied(7, 7, false, 1) && !satisfied(7, 8, false, 1));
        assert!(satisfied(0b110, 0b010, true, 2) && !satisfied(0b100, 0b010, true, 2));
        assert!(satisfied(0, 0, false, 3));
        assert!(!satisfied(u32::MAX as u64, 0, false, 3));
        assert!(!satisfied(0, u64::MAX, true, 3));
    }
}
