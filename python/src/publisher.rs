//! `Publisher` and its `WriteLease`: write frames from numpy arrays or any
//! buffer, in place or by copy.

use crate::dlpack::{self, DLPackView, DlDevice, Keep, Owner, DEVICE_CPU};
use crate::enums::{PyLosslessPolicy, PyPixelFormat};
use crate::errors::{raise, IntoPy};
use crate::planes::Slot;
use cuframes::{ErrorCode, FrameLayout, MappingGuard, Publisher, PublisherOptions};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMemoryView, PySlice};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `PyBUF_WRITE`: a writable memoryview (a stable-ABI constant).
const PYBUF_WRITE: std::ffi::c_int = 0x200;

impl Keep for MappingGuard {}

/// Creates a stream and writes frames into it.
///
/// Thread-safety: methods may be called from any thread; they are
/// serialised. One lease at a time: `loan()` while a lease is open raises
/// `CuframesInvalidArgumentError`.
#[pyclass(name = "Publisher", module = "cuframes._native", frozen)]
pub struct PyPublisher {
    /// The publisher, until closed.
    publisher: Mutex<Option<Publisher>>,
    /// Keeps the mapping alive for views that outlive the publisher.
    guard: MappingGuard,
    /// The stream key.
    key: String,
    /// The frames' layout.
    layout: FrameLayout,
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
}

impl PyPublisher {
    /// Runs `f` on the open publisher with the GIL released: the lock may
    /// be held for a whole loan wait, and a thread must never wait for it
    /// while holding the GIL. Returns the Rust error, converted by the
    /// caller once the GIL is back.
    fn with_publisher<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Publisher) -> cuframes::Result<T> + Send,
    ) -> cuframes::Result<T> {
        py.detach(|| {
            let mut guard = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
            let p = guard.as_mut().ok_or_else(|| {
                cuframes::Error::new(ErrorCode::Closed, "the publisher was closed")
            })?;
            f(p)
        })
    }

    /// The slot at `base` as writable host memory.
    fn slot(&self, base: *mut u8) -> Slot {
        Slot {
            layout: self.layout,
            format: self
                .layout
                .pixel_format()
                .expect("our own layout validated"),
            base: base as usize,
            device: DlDevice {
                device_type: DEVICE_CPU,
                device_id: 0,
            },
            read_only: false,
        }
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
    /// Creates stream `key` for `width` x `height` frames of `format`.
    /// Raises `CuframesAlreadyExistsError` if a live publisher has the key.
    #[new]
    #[pyo3(signature = (key, width, height, format=PyPixelFormat::NV12, *, slots=8, subscriber_capacity=16, policy=PyLosslessPolicy::BLOCK, block_timeout_ms=1000, pitch_align=64, mode=0o600, evict_lagging=true))]
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
        pitch_align: u32,
        mode: u32,
        evict_lagging: bool,
    ) -> PyResult<Self> {
        let layout = FrameLayout::new(format.into(), width, height, pitch_align)
            .map_err(|e| raise(ErrorCode::InvalidArgument, &e.to_string()))?;
        let options = PublisherOptions {
            slot_count: slots,
            subscriber_capacity,
            policy: policy.into(),
            block_timeout: Duration::from_millis(block_timeout_ms),
            mode,
            pitch_align,
            evict_lagging,
            ..Default::default()
        };
        let publisher = py.detach(|| Publisher::create(key, layout, options)).py()?;
        Ok(Self {
            guard: publisher.mapping_guard(),
            publisher: Mutex::new(Some(publisher)),
            key: key.to_owned(),
            layout,
        })
    }

    /// Loans a slot, waiting (GIL released) while every slot is held or a
    /// QUEUE subscriber lags under BLOCK; `CuframesTimeoutError` after the
    /// block timeout.
    fn loan(slf: Bound<'_, Self>) -> PyResult<PyLease> {
        let py = slf.py();
        let me = slf.get();
        let lease = me.with_publisher(py, |p| p.loan_detached()).py()?;
        Ok(PyLease {
            seq: lease.seq,
            slot: me.slot(lease.data),
            publisher: slf.unbind(),
            open: Mutex::new(true),
        })
    }

    /// Copies a tightly packed frame (planes in order, rows without
    /// padding: `width*height*3/2` bytes for NV12) from any C-contiguous
    /// buffer — bytes, bytearray, a numpy array of any dtype — and commits
    /// it. Returns the frame's seq.
    #[pyo3(signature = (data, pts_ns=0))]
    fn publish(&self, py: Python<'_>, data: &Bound<'_, PyAny>, pts_ns: i64) -> PyResult<u64> {
        let src = contiguous(data)?;
        let len = src.len()?;
        let need = self.layout.packed_bytes();
        if len as u64 != need {
            return Err(raise(
                ErrorCode::InvalidArgument,
                &format!(
                    "the frame has {len} bytes; a packed {}x{} {} frame has {need}",
                    self.layout.width,
                    self.layout.height,
                    self.layout.pixel_format().map_or("?", |f| f.name())
                ),
            ));
        }
        let lease = self.with_publisher(py, |p| p.loan_detached()).py()?;
        // SAFETY: the loaned slot's `len` bytes are ours to write until
        // commit or abort (the publisher lock is not needed for that: only
        // this call knows the lease).
        let copied = unsafe { copy_runs(&src, lease.data, lease.len, self.layout.packed_rows()) };
        if let Err(e) = copied {
            let _ = self.with_publisher(py, |p| Ok(p.abort_detached()));
            return Err(e);
        }
        self.with_publisher(py, |p| p.commit_detached(pts_ns)).py()
    }

    /// Closes the stream: subscribers drain what is left, then get
    /// `CuframesClosedError`; the segment is removed. Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let p = self
                .publisher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            drop(p);
        });
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| {
            self.publisher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
        })
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

    /// Ring-wide counters from shared memory, with one dict per subscriber.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.guard.ring_stats());
        crate::streams::ring_stats_dict(py, &s)
    }

    /// `Publisher(key=…, WxH format)`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Publisher(key={:?}, {}x{} {}{})",
            self.key,
            self.layout.width,
            self.layout.height,
            self.layout.pixel_format().map_or("?", |f| f.name()),
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
            raise(
                ErrorCode::InvalidArgument,
                &format!("{} frames have no plane {i}", self.slot.format.name()),
            )
        })?;
        // Views keep the mapping (not the lease) alive: writing through one
        // after commit is a caller bug, but never touches unmapped memory.
        let owner: Owner = Arc::new(self.publisher.get().guard.clone());
        Ok(DLPackView::new(spec, owner))
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
                .with_publisher(py, |p| p.commit_detached(pts))
                .py()
                .map(Some),
            None => {
                let _ = publisher.with_publisher(py, |p| Ok(p.abort_detached()));
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
    /// The luma (or only) plane as a writable numpy array (no copy).
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
    /// for `torch.from_dlpack`.
    fn plane(&self, i: usize) -> PyResult<DLPackView> {
        self.view(i)
    }
    /// Fills the slot with the test pattern for this seq (every frame
    /// carries its seq and a checksum; subscribers check it with
    /// `CuframesFrame.verify_test_pattern`).
    fn fill_test_pattern(&self) -> PyResult<()> {
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
