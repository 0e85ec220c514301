//! `Publisher` and its `WriteLease`: write frames from numpy arrays, any
//! buffer or DLPack tensor, in place or by copy, into host shared memory
//! or (with `cuda_device=`) GPU memory.

use crate::cuda::{self, Device, Event, PER_THREAD_STREAM};
use crate::dlpack::{self, DLPackView, DlDevice, Keep, Owner, DEVICE_CPU, DEVICE_CUDA};
use crate::enums::{PyLosslessPolicy, PyPixelFormat};
use crate::errors::{raise, IntoPy};
use crate::planes::Slot;
use crate::source::{self, Expect, Place, SrcPlane};
use cuframes::{Error, ErrorCode, FrameLayout, MappingGuard, Publisher, PublisherOptions};
use cuframes_cuda::{CudaPublisher, CudaPublisherOptions, DevicePlane, ExportRequest, RawStream};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PySlice};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

/// `PyBUF_WRITE`: a writable memoryview (a stable-ABI constant).
const PYBUF_WRITE: std::ffi::c_int = 0x200;

/// Device copies whose sources `publish_from` keeps alive at most; past
/// this it waits on the host for the oldest copy.
const MAX_IN_FLIGHT: usize = 16;

impl Keep for MappingGuard {}

/// A `Closed` error.
fn closed() -> Error {
    Error::new(ErrorCode::Closed, "the publisher was closed")
}

/// A publisher handle (frames or packets) that its Python object owns
/// until `close()`. Calls lock it without the GIL: the lock may be held
/// for a whole loan wait, and a thread must never wait for it while
/// holding the GIL.
pub struct Open<W>(Mutex<Option<W>>);

impl<W: Send> Open<W> {
    /// Owns `w`.
    pub fn new(w: W) -> Self {
        Self(Mutex::new(Some(w)))
    }

    /// The lock (poisoning ignored); take it with the GIL released.
    fn lock(&self) -> MutexGuard<'_, Option<W>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the open handle with the GIL released. Returns the Rust
    /// error (`Closed` once closed), converted by the caller once the GIL
    /// is back.
    pub fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut W) -> cuframes::Result<T> + Send,
    ) -> cuframes::Result<T> {
        py.detach(|| f(self.lock().as_mut().ok_or_else(closed)?))
    }

    /// Takes the handle out, waiting for a call in progress; `None` once
    /// closed. Call it with the GIL released.
    fn take(&self) -> Option<W> {
        self.lock().take()
    }

    /// Drops the handle (GIL released: a call in progress finishes
    /// first). Idempotent.
    pub fn close(&self, py: Python<'_>) {
        py.detach(|| drop(self.take()));
    }

    /// Whether it was closed (waits for a call in progress).
    pub fn is_closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.lock().is_none())
    }
}

/// The ring options every publisher takes from Python (`slots=`,
/// `subscriber_capacity=`, `policy=`, `block_timeout_ms=`, `mode=`,
/// `evict_lagging=`).
pub fn ring_options(
    slots: u32,
    subscriber_capacity: u32,
    policy: PyLosslessPolicy,
    block_timeout_ms: u64,
    mode: u32,
    evict_lagging: bool,
) -> PublisherOptions {
    PublisherOptions {
        slot_count: slots,
        subscriber_capacity,
        policy: policy.into(),
        block_timeout: Duration::from_millis(block_timeout_ms),
        mode,
        evict_lagging,
        ..Default::default()
    }
}

/// An `InvalidArgument` exception.
fn invalid(m: &str) -> PyErr {
    raise(ErrorCode::InvalidArgument, m)
}

/// The stream's writer: host shared memory or GPU memory.
enum Writer {
    /// Slots in host shared memory.
    Host(Box<Publisher>),
    /// Slots in one GPU allocation.
    Cuda(Box<GpuWriter>),
}

/// A CUDA publisher and the loan it has out.
struct GpuWriter {
    /// The publisher (its stream orders every write to a slot).
    publisher: CudaPublisher,
    /// Its device's primary context, for the binding's own driver calls.
    ctx: Arc<Device>,
    /// The pending loan of a `WriteLease` (its seq and slot;
    /// `CudaDetachedLease` holds a raw stream pointer, which is not
    /// `Send`) and its DLPack consumers.
    loan: Option<(u64, u32, Arc<LeaseSync>)>,
}

/// A slot just loaned.
struct Loan {
    /// The seq the frame will get.
    seq: u64,
    /// Address of the slot's first byte: host, or device for GPU streams.
    base: usize,
    /// GPU streams: the stream writes are ordered on, and the record of
    /// the streams the planes were exported to.
    cuda: Option<(usize, Arc<LeaseSync>)>,
}

impl Writer {
    /// Loans a slot (waiting up to the block timeout).
    fn loan(&mut self) -> cuframes::Result<Loan> {
        match self {
            Writer::Host(p) => {
                let d = p.loan_detached()?;
                Ok(Loan {
                    seq: d.seq,
                    base: d.data as usize,
                    cuda: None,
                })
            }
            Writer::Cuda(g) => {
                let d = g.publisher.loan_detached()?;
                let stream = d.stream as usize;
                let sync = Arc::new(LeaseSync {
                    ctx: g.ctx.clone(),
                    stream,
                    state: Mutex::new(SyncState {
                        open: true,
                        readers: Vec::new(),
                    }),
                    keep: Mutex::new(None),
                });
                g.loan = Some((d.seq, d.slot, sync.clone()));
                Ok(Loan {
                    seq: d.seq,
                    base: g.publisher.slot_ptr(d.slot).unwrap_or(0) as usize,
                    cuda: Some((stream, sync)),
                })
            }
        }
    }

    /// Publishes the loaned slot: on a GPU, after the work enqueued by
    /// then on every stream its planes were exported to.
    fn commit(&mut self, pts_ns: i64) -> cuframes::Result<u64> {
        match self {
            Writer::Host(p) => p.commit_detached(pts_ns),
            Writer::Cuda(g) => {
                if let Err(e) = g.order_loan() {
                    g.publisher.abort_detached();
                    return Err(e);
                }
                g.publisher.commit_detached(pts_ns)
            }
        }
    }

    /// Gives the loaned slot back unpublished; false if there was none.
    fn abort(&mut self) -> bool {
        match self {
            Writer::Host(p) => p.abort_detached(),
            Writer::Cuda(g) => {
                // Writes still running on a consumer's stream must not
                // land in the slot's next frame.
                let _ = g.order_loan();
                g.publisher.abort_detached()
            }
        }
    }

    /// Copies a tightly packed host frame into a slot and publishes it.
    fn publish_packed(&mut self, packed: &[u8], pts_ns: i64) -> cuframes::Result<u64> {
        match self {
            Writer::Host(p) => p.publish_from(packed, pts_ns),
            Writer::Cuda(g) => g.publisher.publish_from_host(packed, pts_ns),
        }
    }

    /// The GPU writer, or an `Internal` error (the caller checked).
    fn gpu(&mut self) -> cuframes::Result<&mut GpuWriter> {
        match self {
            Writer::Cuda(g) => Ok(g),
            Writer::Host(_) => Err(Error::new(
                ErrorCode::Internal,
                "a GPU operation on a host-memory publisher",
            )),
        }
    }
}

impl GpuWriter {
    /// Orders the publisher's stream after the DLPack consumers of the
    /// pending loan, and ends it for them.
    fn order_loan(&mut self) -> cuframes::Result<()> {
        match self.loan.take() {
            Some((_, _, sync)) => sync.finish(),
            None => Ok(()),
        }
    }

    /// Uploads a slot image (`slot_bytes`, the layout's pitches) into the
    /// slot of pending loan `seq`, on its stream.
    fn upload(&self, seq: u64, image: &[u8]) -> cuframes::Result<()> {
        let (slot, sync) = match &self.loan {
            Some((s, slot, sync)) if *s == seq => (slot, sync),
            _ => {
                return Err(Error::new(
                    ErrorCode::Released,
                    "the lease was committed or aborted",
                ))
            }
        };
        let base = self.publisher.slot_ptr(*slot).unwrap_or(0);
        if image.len() as u64 > self.publisher.slot_stride() {
            return Err(Error::new(ErrorCode::Internal, "slot image too large"));
        }
        // SAFETY: the range is inside the loaned slot of the publisher's
        // allocation (at most `slot_stride` bytes), which only the holder
        // of the loan writes until commit; the stream is the publisher's.
        unsafe { self.ctx.upload(base, image, sync.stream as RawStream) }
    }

    /// Loans a slot, copies the device picture `planes` into it on the
    /// publisher's stream (after `src_stream`'s work, if given), and
    /// publishes it. Returns the seq, and an event after the copy while
    /// the sources must stay alive (`None`: the copy is complete).
    fn copy_and_commit(
        &mut self,
        planes: &[SrcPlane],
        src_stream: Option<usize>,
        pts_ns: i64,
    ) -> cuframes::Result<(u64, Option<Event>)> {
        let src = planes
            .iter()
            .map(|p| {
                let pitch = u32::try_from(p.pitch).map_err(|_| {
                    Error::new(
                        ErrorCode::InvalidArgument,
                        format!("a row pitch of {} bytes is too large", p.pitch),
                    )
                })?;
                Ok(DevicePlane {
                    ptr: p.ptr,
                    pitch,
                    row_bytes: p.row_bytes,
                    rows: p.rows,
                })
            })
            .collect::<cuframes::Result<Vec<_>>>()?;
        let d = self.publisher.loan_detached()?;
        let stream = d.stream as usize;
        let from = src_stream.unwrap_or(stream) as RawStream;
        // SAFETY: each source plane is `rows` rows of `row_bytes` bytes,
        // `pitch` apart, of device memory on the publisher's device (the
        // producer's DLPack tensor, checked against the layout), kept
        // alive until the copy has run: the caller holds the capsules
        // until the returned event completes; `from` is the caller's
        // stream handle (or the publisher's own).
        let copied = unsafe { self.publisher.copy_from_device_detached(&d, &src, from) };
        if let Err(e) = copied {
            self.publisher.abort_detached();
            // Planes copied before the failure may still be reading.
            let _ = self.ctx.synchronize();
            return Err(e);
        }
        let event = match Event::local(&self.ctx).and_then(|ev| ev.record(d.stream).map(|()| ev)) {
            Ok(ev) => Some(ev),
            Err(_) => {
                // No event to tell when the copy is done: wait for it.
                let waited = self.ctx.synchronize();
                if let Err(e) = waited {
                    self.publisher.abort_detached();
                    return Err(e);
                }
                None
            }
        };
        match self.publisher.commit_detached(pts_ns) {
            Ok(seq) => Ok((seq, event)),
            Err(e) => {
                if let Some(ev) = &event {
                    let _ = ev.synchronize();
                }
                Err(e)
            }
        }
    }
}

impl Drop for GpuWriter {
    fn drop(&mut self) {
        // A lease left open: its consumers' writes finish before the
        // publisher's stream does (it synchronises when dropped).
        let _ = self.order_loan();
    }
}

/// The streams a GPU loan's planes were exported to (DLPack consumers that
/// write), so that the commit is ordered after their writes.
pub struct LeaseSync {
    /// The publisher's device context.
    ctx: Arc<Device>,
    /// The stream the publisher orders the slot's writes on.
    stream: usize,
    /// Whether the loan is pending, and who exported what.
    state: Mutex<SyncState>,
    /// The GPU publisher, kept here when it was closed while views of this
    /// loan's planes were alive: its memory lives until the last view goes.
    keep: Mutex<Option<Box<GpuWriter>>>,
}

/// [`LeaseSync`]'s mutable part.
struct SyncState {
    /// Until commit or abort (or the publisher's close).
    open: bool,
    /// Streams given to `__dlpack__`, with the thread that gave them (the
    /// per-thread default stream is that thread's).
    readers: Vec<(usize, ThreadId)>,
}

impl Keep for LeaseSync {
    /// A consumer will write the plane on `stream`: it waits (on the GPU)
    /// for what the publisher's stream has enqueued for the slot (the wait
    /// for subscribers' reads of its last frame), and the commit will wait
    /// for the work it has enqueued by then.
    fn use_on(&self, stream: usize) -> cuframes::Result<()> {
        // Held while ordering: the publisher (and its stream) cannot close
        // meanwhile, since its close ends the loan through `finish`.
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !st.open {
            return Err(Error::new(
                ErrorCode::Released,
                "the lease was committed or aborted: its planes can no longer be exported",
            ));
        }
        if cuda::same_stream(stream, self.stream) {
            return Ok(());
        }
        cuda::order_after(&self.ctx, self.stream, stream)?;
        let me = std::thread::current().id();
        let known = st
            .readers
            .iter()
            .any(|&(s, t)| s == stream && (s != PER_THREAD_STREAM || t == me));
        if !known {
            st.readers.push((stream, me));
        }
        Ok(())
    }
}

impl LeaseSync {
    /// Ends the loan for exports and orders the publisher's stream after
    /// every stream a plane was exported to. Another thread's per-thread
    /// default stream cannot be named here: the context is synchronised
    /// instead, as is everything when an order cannot be made.
    fn finish(&self) -> cuframes::Result<()> {
        // Closed and emptied under the lock, then ordered without it: an
        // export (`use_on`, which may hold the GIL) never waits for a
        // context synchronise; one already running finished before we got
        // the lock, and none starts after.
        let readers = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.open = false;
            std::mem::take(&mut st.readers)
        };
        let me = std::thread::current().id();
        let ordered = readers.iter().try_for_each(|&(s, t)| {
            if s == PER_THREAD_STREAM && t != me {
                self.ctx.synchronize()
            } else {
                cuda::order_after(&self.ctx, s, self.stream)
            }
        });
        match ordered {
            Ok(()) => Ok(()),
            Err(_) => self.ctx.synchronize(),
        }
    }
}

/// What a GPU publisher is.
struct CudaInfo {
    /// Device ordinal.
    device: u32,
    /// The publisher's stream handle.
    stream: usize,
    /// `"ipc"` or `"vmm-fd"`.
    export: &'static str,
}

/// Creates a stream and writes frames into it.
///
/// Thread-safety: methods may be called from any thread; they are
/// serialised. One lease at a time: `loan()` while a lease is open raises
/// `CuframesInvalidArgumentError`.
#[pyclass(name = "Publisher", module = "cuframes._native", frozen)]
pub struct PyPublisher {
    /// The writer, until closed. (Dropped before `in_flight`: a GPU
    /// publisher finishes its stream, and so every copy, first.)
    publisher: Open<Writer>,
    /// Keeps the ring's mapping alive for views that outlive the publisher
    /// (and for `stats()`).
    guard: MappingGuard,
    /// The stream key.
    key: String,
    /// The frames' layout.
    layout: FrameLayout,
    /// Set for a GPU-memory stream.
    cuda: Option<CudaInfo>,
    /// DLPack capsules of device sources whose copies may still run, each
    /// batch with an event recorded after its copy.
    in_flight: Mutex<VecDeque<InFlight>>,
}

/// A device copy that may still read its sources.
struct InFlight {
    /// Recorded on the publisher's stream after the copy.
    event: Event,
    /// The DLPack capsules of the sources (dropping one lets its producer
    /// free the tensor).
    _sources: Vec<Py<PyAny>>,
}

/// A loaned slot: write its planes (`y`, `uv`, `planes`, or `plane(i)` via
/// DLPack), then `commit()`. Leaving a `with` block without committing, or
/// dropping the lease, aborts it: nothing is published.
#[pyclass(name = "WriteLease", module = "cuframes._native", frozen)]
pub struct PyLease {
    /// The publisher that loaned the slot.
    publisher: Py<PyPublisher>,
    /// The seq the frame will get.
    seq: u64,
    /// The loaned slot.
    slot: Slot,
    /// Neither committed nor aborted yet.
    open: Mutex<bool>,
    /// What plane views keep: the mapping (host), or the record of the
    /// streams they were exported to (GPU).
    owner: Owner,
    /// The stream writes are ordered on (GPU streams).
    cuda_stream: Option<usize>,
}

impl PyPublisher {
    /// Runs `f` on the open writer with the GIL released (see [`Open`]).
    fn with_publisher<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Writer) -> cuframes::Result<T> + Send,
    ) -> cuframes::Result<T> {
        self.publisher.with(py, f)
    }

    /// Runs `f` with the writer locked and the GIL held: the lock is taken
    /// without the GIL (as everywhere), then the GIL is taken back. For
    /// work that calls Python code (a producer's `__dlpack__`) that must
    /// not race with `close()`.
    fn with_publisher_locked<T: Send>(
        &self,
        py: Python<'_>,
        f: impl for<'py> FnOnce(Python<'py>, &mut Writer) -> PyResult<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.publisher.lock();
            Python::attach(|py| match guard.as_mut() {
                Some(w) => f(py, w),
                None => Err(crate::errors::to_py(closed())),
            })
        })
    }

    /// The slot at `base` (host or device address) as writable memory.
    fn slot(&self, base: usize) -> Slot {
        Slot {
            layout: self.layout,
            format: self
                .layout
                .pixel_format()
                .expect("our own layout validated"),
            base,
            device: match &self.cuda {
                None => DlDevice {
                    device_type: DEVICE_CPU,
                    device_id: 0,
                },
                Some(c) => DlDevice {
                    device_type: DEVICE_CUDA,
                    device_id: c.device as i32,
                },
            },
            read_only: false,
        }
    }

    /// Lets go of the sources of device copies that have completed.
    fn retire(&self) {
        let mut done = Vec::new();
        {
            let mut q = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while q
                .front()
                .is_some_and(|f| f.event.is_done().unwrap_or(false))
            {
                done.extend(q.pop_front());
            }
        }
        // Dropped unlocked: a capsule's destructor runs the producer's code.
        drop(done);
    }

    /// Keeps `sources` alive until `event` (after their copy) completes;
    /// past [`MAX_IN_FLIGHT`] batches, waits for the oldest.
    fn park(&self, py: Python<'_>, event: Option<Event>, sources: Vec<Py<PyAny>>) {
        let Some(event) = event else {
            return;
        };
        let oldest = {
            let mut q = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            q.push_back(InFlight {
                event,
                _sources: sources,
            });
            if q.len() > MAX_IN_FLIGHT {
                q.pop_front()
            } else {
                None
            }
        };
        if let Some(oldest) = oldest {
            // The copy may still read them: wait (GIL released) first.
            py.detach(|| {
                let _ = oldest.event.synchronize();
            });
            drop(oldest);
        }
    }

    /// `publish_from` for host data: copied row by row into a host slot
    /// (GIL held, so the source cannot change meanwhile), or packed and
    /// uploaded to a GPU slot.
    fn publish_host_data(
        &self,
        py: Python<'_>,
        objs: &[Bound<'_, PyAny>],
        expect: &Expect,
        pts_ns: i64,
    ) -> PyResult<u64> {
        let mut keep = Vec::with_capacity(objs.len());
        let mut tensors = Vec::with_capacity(objs.len());
        for o in objs {
            let (capsule, t) = source::export(o, None)?;
            if t.place()? != Place::Host {
                return Err(invalid(
                    "publish_from: __dlpack_device__ said host memory, but the tensor is not",
                ));
            }
            keep.push(capsule);
            tensors.push(t);
        }
        let planes = expect.planes(&tensors)?;
        let runs = self.layout.planes().iter().zip(&planes).flat_map(|(d, s)| {
            (0..u64::from(s.rows)).map(move |r| {
                (
                    d.offset + r * u64::from(d.pitch),
                    s.ptr + r * s.pitch,
                    s.row_bytes as usize,
                )
            })
        });
        if self.cuda.is_some() {
            let mut packed = Vec::with_capacity(self.layout.packed_bytes() as usize);
            for (_, from, n) in runs {
                // SAFETY: a row of the producer's host tensor (checked
                // against the layout), alive while `keep` holds its
                // capsule; the GIL is held, so no Python code changes it.
                packed.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(from as usize as *const u8, n)
                });
            }
            drop(keep);
            return self
                .with_publisher(py, |w| w.publish_packed(&packed, pts_ns))
                .py();
        }
        let loan = self.with_publisher(py, |w| w.loan()).py()?;
        for (to, from, n) in runs {
            // SAFETY: the source row is the producer's host memory as above;
            // the destination row lies inside the loaned slot, ours to
            // write until commit (the mapping is kept by `self.guard`).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    from as usize as *const u8,
                    (loan.base + to as usize) as *mut u8,
                    n,
                );
            }
        }
        drop(keep);
        self.with_publisher(py, |w| w.commit(pts_ns)).py()
    }

    /// `publish_from` for device data: exported with the publisher's
    /// stream as the consumer's (the producer orders its work before it),
    /// copied on that stream, committed; the capsules stay alive until
    /// the copy has run.
    fn publish_device_data(
        &self,
        py: Python<'_>,
        objs: Vec<Py<PyAny>>,
        expect: &Expect,
        src_stream: Option<usize>,
        pts_ns: i64,
    ) -> PyResult<u64> {
        let Some(info) = &self.cuda else {
            return Err(raise(ErrorCode::Internal, "not a GPU publisher"));
        };
        let (stream, device) = (info.stream, info.device as i32);
        let (seq, event, capsules) = self.with_publisher_locked(py, |py, w| {
            let mut capsules = Vec::with_capacity(objs.len());
            let mut tensors = Vec::with_capacity(objs.len());
            for o in &objs {
                let (capsule, t) = source::export(o.bind(py), Some(stream))?;
                let place = t.place()?;
                if place != Place::Cuda(device) {
                    return Err(invalid(&format!(
                        "publish_from: the tensor is in {}; this publisher's frames are on CUDA \
                         device {device}",
                        place.name()
                    )));
                }
                capsules.push(capsule.unbind());
                tensors.push(t);
            }
            let planes = expect.planes(&tensors)?;
            let gpu = w.gpu().py()?;
            let (seq, event) = py
                .detach(|| gpu.copy_and_commit(&planes, src_stream, pts_ns))
                .py()?;
            Ok((seq, event, capsules))
        })?;
        self.park(py, event, capsules);
        Ok(seq)
    }
}

/// A C-contiguous buffer as a flat memoryview of bytes, or
/// `InvalidArgument`. (The limited C API has no buffer protocol before
/// Python 3.11; a memoryview gives the same zero-copy access.)
fn contiguous<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let view = PyMemoryView::from(data)?;
    if !view.getattr("c_contiguous")?.is_truthy()? {
        return Err(raise(
            ErrorCode::InvalidArgument,
            "the frame buffer must be C-contiguous (numpy.ascontiguousarray)",
        ));
    }
    view.call_method1("cast", ("B",))
}

/// Copies `runs` of `(to, from, len)` bytes from the flat byte view `src`
/// into `len` writable bytes at `dst`, adjacent runs merged (one copy when
/// the rows are unpadded). The GIL is held throughout, so no Python code
/// can change `src` meanwhile.
///
/// # Safety
/// `dst .. dst + len` must be writable memory nobody else uses meanwhile.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
unsafe fn copy_runs(
    src: &Bound<'_, PyAny>,
    dst: *mut u8,
    len: usize,
    runs: impl Iterator<Item = (u64, u64, u64)>,
) -> PyResult<()> {
    let py = src.py();
    // SAFETY: the caller vouches for `len` writable bytes at `dst`; the view
    // is released below, before the caller can give the memory back.
    let target = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(dst.cast(), len as ffi::Py_ssize_t, PYBUF_WRITE),
        )?
    };
    let mut merged: Vec<(usize, usize, usize)> = Vec::new();
    for (to, from, n) in runs {
        let (to, from, n) = (to as usize, from as usize, n as usize);
        match merged.last_mut() {
            Some((t, f, m)) if *t + *m == to && *f + *m == from => *m += n,
            _ => merged.push((to, from, n)),
        }
    }
    let copied = merged.iter().try_for_each(|&(to, from, n)| {
        let part = src.get_item(PySlice::new(py, from as isize, (from + n) as isize, 1))?;
        target.set_item(PySlice::new(py, to as isize, (to + n) as isize, 1), part)
    });
    target.call_method0("release")?;
    copied
}

#[pymethods]
impl PyPublisher {
    /// Creates stream `key` for `width` x `height` frames of `format`, in
    /// host shared memory, or with `cuda_device=N` in that GPU's memory,
    /// exported as `export` (`"auto"`, `"ipc"` or `"vmm-fd"`). Raises
    /// `CuframesAlreadyExistsError` if a live publisher has the key,
    /// `CuframesCudaError` without a usable GPU.
    #[new]
    #[pyo3(signature = (key, width, height, format=PyPixelFormat::NV12, *, slots=8, subscriber_capacity=16, policy=PyLosslessPolicy::BLOCK, block_timeout_ms=1000, pitch_align=None, mode=0o600, evict_lagging=true, cuda_device=None, export="auto"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        key: &str,
        width: u32,
        height: u32,
        format: PyPixelFormat,
        slots: u32,
        subscriber_capacity: u32,
        policy: PyLosslessPolicy,
        block_timeout_ms: u64,
        pitch_align: Option<u32>,
        mode: u32,
        evict_lagging: bool,
        cuda_device: Option<u32>,
        export: &str,
    ) -> PyResult<Self> {
        let export = match export {
            "auto" => ExportRequest::Auto,
            "ipc" => ExportRequest::Ipc,
            "vmm-fd" => ExportRequest::VmmFd,
            other => {
                return Err(invalid(&format!(
                    "export={other:?}: use \"auto\", \"ipc\" or \"vmm-fd\""
                )))
            }
        };
        if cuda_device.is_none() && export != ExportRequest::Auto {
            return Err(invalid(
                "export= applies to GPU streams only: pass cuda_device= too",
            ));
        }
        let defaults = CudaPublisherOptions::default();
        let pitch_align = pitch_align.unwrap_or(match cuda_device {
            None => PublisherOptions::default().pitch_align,
            Some(_) => defaults.pitch_align,
        });
        let ring = PublisherOptions {
            pitch_align,
            ..ring_options(
                slots,
                subscriber_capacity,
                policy,
                block_timeout_ms,
                mode,
                evict_lagging,
            )
        };
        let Some(device) = cuda_device else {
            let layout = FrameLayout::new(format.into(), width, height, pitch_align)
                .map_err(|e| invalid(&e.to_string()))?;
            let publisher = py.detach(|| Publisher::create(key, layout, ring)).py()?;
            return Ok(Self {
                guard: publisher.mapping_guard(),
                publisher: Open::new(Writer::Host(Box::new(publisher))),
                key: key.to_owned(),
                layout,
                cuda: None,
                in_flight: Mutex::new(VecDeque::new()),
            });
        };
        let options = CudaPublisherOptions {
            ring,
            device,
            export,
            pitch_align,
            ..defaults
        };
        let created = py.detach(|| {
            let publisher = CudaPublisher::create(key, format.into(), width, height, options)?;
            let ctx = Device::open(publisher.device())?;
            Ok::<_, Error>((publisher, ctx))
        });
        let (publisher, ctx) = created.py()?;
        let info = CudaInfo {
            device: publisher.device(),
            stream: publisher.stream() as usize,
            export: publisher.export_mode().name(),
        };
        Ok(Self {
            guard: publisher.host().mapping_guard(),
            layout: *publisher.layout(),
            publisher: Open::new(Writer::Cuda(Box::new(GpuWriter {
                publisher,
                ctx,
                loan: None,
            }))),
            key: key.to_owned(),
            cuda: Some(info),
            in_flight: Mutex::new(VecDeque::new()),
        })
    }

    /// Loans a slot, waiting (GIL released) while every slot is held or a
    /// QUEUE subscriber lags under BLOCK; `CuframesTimeoutError` after the
    /// block timeout.
    fn loan(slf: Bound<'_, Self>) -> PyResult<PyLease> {
        let py = slf.py();
        let me = slf.get();
        me.retire();
        let loan = me.with_publisher(py, |w| w.loan()).py()?;
        let (owner, cuda_stream): (Owner, _) = match loan.cuda {
            // Views of a host slot keep the mapping (not the lease) alive:
            // writing through one after commit is a caller bug, but never
            // touches unmapped memory.
            None => (Arc::new(me.guard.clone()), None),
            Some((stream, sync)) => (sync, Some(stream)),
        };
        Ok(PyLease {
            seq: loan.seq,
            slot: me.slot(loan.base),
            publisher: slf.unbind(),
            open: Mutex::new(true),
            owner,
            cuda_stream,
        })
    }

    /// Copies a tightly packed frame (planes in order, rows without
    /// padding: `width*height*3/2` bytes for NV12) from any C-contiguous
    /// buffer — bytes, bytearray, a numpy array of any dtype — and commits
    /// it. Returns the frame's seq.
    #[pyo3(signature = (data, pts_ns=0))]
    fn publish(&self, py: Python<'_>, data: &Bound<'_, PyAny>, pts_ns: i64) -> PyResult<u64> {
        self.retire();
        let src = contiguous(data)?;
        let len = src.len()?;
        let need = self.layout.packed_bytes();
        if len as u64 != need {
            return Err(invalid(&format!(
                "the frame has {len} bytes; a packed {}x{} {} frame has {need}",
                self.layout.width,
                self.layout.height,
                self.layout.pixel_format().map_or("?", |f| f.name())
            )));
        }
        if self.cuda.is_some() {
            // Uploaded from a private copy: the upload waits for a slot
            // without the GIL, while Python code could change the buffer.
            let bytes = src.call_method0("tobytes")?.cast_into::<PyBytes>()?;
            let packed = bytes.as_bytes();
            return self
                .with_publisher(py, |w| w.publish_packed(packed, pts_ns))
                .py();
        }
        let loan = self.with_publisher(py, |w| w.loan()).py()?;
        let len = self.layout.slot_bytes as usize;
        // SAFETY: the loaned slot's `len` bytes are ours to write until
        // commit or abort (the publisher lock is not needed for that: only
        // this call knows the lease).
        let copied =
            unsafe { copy_runs(&src, loan.base as *mut u8, len, self.layout.packed_rows()) };
        if let Err(e) = copied {
            let _ = self.with_publisher(py, |w| Ok(w.abort()));
            return Err(e);
        }
        self.with_publisher(py, |w| w.commit(pts_ns)).py()
    }

    /// Copies a picture from anything with the DLPack protocol and commits
    /// it; returns the frame's seq. `data` is one tensor holding the frame
    /// (a plane's shape for one-plane formats; for NV12/P010 the
    /// `(height*3/2, width)` picture; or the packed elements in one
    /// dimension) or a tuple/list of one tensor per plane, of the format's
    /// element type (uint8, uint16 for P010), rows dense and any row
    /// pitch. Device tensors (GPU streams only, on the publisher's device)
    /// are exported with `__dlpack__(stream=<the publisher's stream>)`, so
    /// the producer orders its work before the copy; `stream` (an int or a
    /// torch/CuPy stream) also orders the copy after that stream's work.
    /// Host arrays go to host or GPU streams (`stream` is not used).
    #[pyo3(signature = (data, *, stream=None, pts_ns=0))]
    fn publish_from(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        stream: Option<&Bound<'_, PyAny>>,
        pts_ns: i64,
    ) -> PyResult<u64> {
        self.retire();
        let objs = source::sources(data)?;
        let place = source::place(&objs)?;
        let expect = Expect::new(&self.layout);
        match (place, &self.cuda) {
            (Place::Host, _) => self.publish_host_data(py, &objs, &expect, pts_ns),
            (Place::Cuda(n), None) => Err(invalid(&format!(
                "publish_from: the tensor is on CUDA device {n}, but this publisher's frames \
                 are in host memory: pass a host array (e.g. tensor.cpu()), or create the \
                 publisher with cuda_device={n}"
            ))),
            (Place::Cuda(n), Some(c)) if n != c.device as i32 => Err(invalid(&format!(
                "publish_from: the tensor is on CUDA device {n}; this publisher's frames are on \
                 CUDA device {}",
                c.device
            ))),
            (Place::Cuda(_), Some(_)) => {
                let src_stream = stream.map(crate::subscriber::stream_handle).transpose()?;
                let objs = objs.into_iter().map(Bound::unbind).collect();
                self.publish_device_data(py, objs, &expect, src_stream, pts_ns)
            }
        }
    }

    /// Closes the stream: subscribers drain what is left, then get
    /// `CuframesClosedError`; the segment is removed. Idempotent. A GPU
    /// publisher first finishes its stream's work; in ipc mode it waits up
    /// to 2 s for subscribers to detach before freeing its GPU memory.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if let Some(Writer::Cuda(mut g)) = self.publisher.take() {
                // A loan left open: nothing of it is published. Views of its
                // planes (tensors made from them) may still be written: the
                // memory must outlive them, so the publisher waits in the
                // loan's keeping for the last one to go.
                if let Some((_, _, sync)) = g.loan.take() {
                    g.publisher.close_ring();
                    if Arc::strong_count(&sync) > 1 {
                        *sync.keep.lock().unwrap_or_else(PoisonError::into_inner) = Some(g);
                        return;
                    }
                }
                drop(g);
            }
        });
        // Every copy is complete now: the sources may go.
        let rest = std::mem::take(
            &mut *self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        drop(rest);
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.publisher.is_closed(py)
    }

    /// `with Publisher(...) as pub:` closes the stream at the end.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the stream.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// The stream key.
    #[getter]
    fn key(&self) -> &str {
        &self.key
    }
    /// Frame width in pixels.
    #[getter]
    fn width(&self) -> u32 {
        self.layout.width
    }
    /// Frame height in pixels.
    #[getter]
    fn height(&self) -> u32 {
        self.layout.height
    }
    /// The stream's pixel format.
    #[getter]
    fn format(&self) -> PyPixelFormat {
        self.layout
            .pixel_format()
            .expect("our own layout validated")
            .into()
    }
    /// Row pitch of every plane.
    #[getter]
    fn pitches(&self) -> Vec<u32> {
        self.layout.planes().iter().map(|p| p.pitch).collect()
    }
    /// Bytes `publish()` expects.
    #[getter]
    fn frame_bytes(&self) -> u64 {
        self.layout.packed_bytes()
    }
    /// `"host"` or `"cuda"`: where the frames live.
    #[getter]
    fn memory(&self) -> &'static str {
        if self.cuda.is_some() {
            "cuda"
        } else {
            "host"
        }
    }
    /// The GPU of a GPU-memory stream (`None` for host memory).
    #[getter]
    fn cuda_device(&self) -> Option<u32> {
        self.cuda.as_ref().map(|c| c.device)
    }
    /// `"ipc"` or `"vmm-fd"` for a GPU-memory stream, else `None`.
    #[getter]
    fn export_mode(&self) -> Option<&'static str> {
        self.cuda.as_ref().map(|c| c.export)
    }
    /// The CUDA stream every write to a slot is ordered on (the
    /// publisher's own; `None` for host memory).
    #[getter]
    fn cuda_stream(&self) -> Option<usize> {
        self.cuda.as_ref().map(|c| c.stream)
    }

    /// Ring-wide counters from shared memory, with one dict per subscriber.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.guard.ring_stats());
        crate::streams::ring_stats_dict(py, &s)
    }

    /// `Publisher(key=…, WxH format[, cuda:N mode])`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Publisher(key={:?}, {}x{} {}{}{})",
            self.key,
            self.layout.width,
            self.layout.height,
            self.layout.pixel_format().map_or("?", |f| f.name()),
            self.cuda.as_ref().map_or(String::new(), |c| format!(
                ", cuda:{} {}",
                c.device, c.export
            )),
            if self.closed(py) { ", closed" } else { "" }
        )
    }
}

impl PyLease {
    /// `Ok` while the lease is open, else `CuframesReleasedError`.
    fn check_open(&self) -> PyResult<()> {
        let open = *self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open {
            Ok(())
        } else {
            Err(raise(
                ErrorCode::Released,
                "the lease was committed or aborted",
            ))
        }
    }

    /// A writable view of plane `i`.
    fn view(&self, i: usize) -> PyResult<DLPackView> {
        self.check_open()?;
        let spec = self.slot.plane(i).ok_or_else(|| {
            invalid(&format!(
                "{} frames have no plane {i}",
                self.slot.format.name()
            ))
        })?;
        Ok(DLPackView::new(spec, self.owner.clone()))
    }

    /// Ends the lease once: commit (`Some(pts)`) or abort (`None`).
    fn finish(&self, py: Python<'_>, commit: Option<i64>) -> PyResult<Option<u64>> {
        // Marked ended, then unlocked before the publisher call releases
        // the GIL and before any exception is made.
        let was_open = std::mem::replace(
            &mut *self.open.lock().unwrap_or_else(|p| p.into_inner()),
            false,
        );
        if !was_open {
            return match commit {
                Some(_) => Err(raise(
                    ErrorCode::Released,
                    "the lease was already committed or aborted",
                )),
                None => Ok(None),
            };
        }
        let publisher = self.publisher.get();
        match commit {
            Some(pts) => publisher
                .with_publisher(py, |w| w.commit(pts))
                .py()
                .map(Some),
            None => {
                let _ = publisher.with_publisher(py, |w| Ok(w.abort()));
                Ok(None)
            }
        }
    }
}

impl Drop for PyLease {
    fn drop(&mut self) {
        Python::attach(|py| {
            let _ = self.finish(py, None);
        });
    }
}

#[pymethods]
impl PyLease {
    /// The seq the frame will get.
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }
    /// Row pitch of every plane.
    #[getter]
    fn pitches(&self) -> Vec<u32> {
        self.slot.layout.planes().iter().map(|p| p.pitch).collect()
    }
    /// `"host"` or `"cuda"`: where the slot lives.
    #[getter]
    fn memory(&self) -> &'static str {
        if self.cuda_stream.is_some() {
            "cuda"
        } else {
            "host"
        }
    }
    /// The CUDA stream the slot's writes must be ordered on (writes
    /// through DLPack are ordered by the stream given to `__dlpack__`);
    /// `None` for host memory.
    #[getter]
    fn cuda_stream(&self) -> Option<usize> {
        self.cuda_stream
    }
    /// Device address of the first plane of a GPU slot; 0 for host memory.
    #[getter]
    fn cuda_ptr(&self) -> usize {
        match self.cuda_stream {
            Some(_) => self.slot.base + self.slot.layout.planes()[0].offset as usize,
            None => 0,
        }
    }
    /// The luma (or only) plane as a writable numpy array (no copy; host
    /// memory only).
    #[getter]
    fn y<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.view(0)?)
    }
    /// The chroma plane of NV12/P010, `(height/2, width/2, 2)`, writable.
    #[getter]
    fn uv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.view(1)?)
    }
    /// Every plane as a writable numpy array.
    #[getter]
    fn planes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        (0..self.slot.layout.planes().len())
            .map(|i| dlpack::to_numpy(py, self.view(i)?))
            .collect()
    }
    /// Plane `i` as an object with the DLPack protocol (writable), e.g.
    /// for `torch.from_dlpack`. For a GPU slot, the stream given to
    /// `__dlpack__` waits for the slot to be free, and the commit waits
    /// for the work enqueued on it by then.
    fn plane(&self, i: usize) -> PyResult<DLPackView> {
        self.view(i)
    }
    /// Fills the slot with the test pattern for this seq (every frame
    /// carries its seq and a checksum; subscribers check it with
    /// `CuframesFrame.verify_test_pattern`). A GPU slot gets it uploaded
    /// on the lease's stream.
    fn fill_test_pattern(&self, py: Python<'_>) -> PyResult<()> {
        // Held across the fill: a commit from another thread waits for it.
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if !*open {
            drop(open);
            return Err(raise(
                ErrorCode::Released,
                "the lease was committed or aborted",
            ));
        }
        let len = self.slot.layout.slot_bytes as usize;
        if self.cuda_stream.is_some() {
            // Not held across the upload, which waits for the publisher's
            // lock and maybe its stream with the GIL released: the upload
            // checks under that lock that this loan is still pending.
            drop(open);
            let mut image = vec![0u8; len];
            cuframes::testsrc::fill(&self.slot.layout, &mut image, self.seq);
            let seq = self.seq;
            return self
                .publisher
                .get()
                .with_publisher(py, |w| w.gpu()?.upload(seq, &image))
                .py();
        }
        // SAFETY: the lease is open (and stays so while we hold `open`), so the slot's `len` bytes at `base` are
        // ours to write and mapped (the publisher holds the mapping).
        let slot = unsafe { std::slice::from_raw_parts_mut(self.slot.base as *mut u8, len) };
        cuframes::testsrc::fill(&self.slot.layout, slot, self.seq);
        Ok(())
    }
    /// Publishes the frame; returns its seq.
    #[pyo3(signature = (pts_ns=0))]
    fn commit(&self, py: Python<'_>, pts_ns: i64) -> PyResult<u64> {
        Ok(self.finish(py, Some(pts_ns))?.unwrap_or(self.seq))
    }
    /// Gives the slot back unpublished. Idempotent.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, None).map(drop)
    }
    /// Whether it is neither committed nor aborted.
    #[getter]
    fn open(&self) -> bool {
        *self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// `with pub.loan() as lease:` aborts at the end unless committed.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    /// Aborts the lease if it is still open.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.abort(py)?;
        Ok(false)
    }
}
