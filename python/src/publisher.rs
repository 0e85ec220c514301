//! `Publisher` and its `WriteLease`: write frames from numpy arrays or any
//! buffer, in place or by copy.

use crate::dlpack::{self, DLPackView, DlDevice, Keep, Owner, DEVICE_CPU};
use crate::enums::{PyLosslessPolicy, PyPixelFormat};
use crate::errors::{raise, IntoPy};
use crate::planes::Slot;
use cuframes::{ErrorCode, FrameLayout, MappingGuard, Publisher, PublisherOptions};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl Keep for MappingGuard {}

/// Creates a stream and writes frames into it.
///
/// Thread-safety: methods may be called from any thread; they are
/// serialised. One lease at a time: `loan()` while a lease is open raises
/// `CuframesInvalidArgumentError`.
#[pyclass(name = "Publisher", module = "cuframes._native", frozen)]
pub struct PyPublisher {
    publisher: Mutex<Option<Publisher>>,
    guard: MappingGuard,
    key: String,
    layout: FrameLayout,
}

/// A loaned slot: write its planes (`y`, `uv`, `planes`, or `plane(i)` via
/// DLPack), then `commit()`. Leaving a `with` block without committing, or
/// dropping the lease, aborts it: nothing is published.
#[pyclass(name = "WriteLease", module = "cuframes._native", frozen)]
pub struct PyLease {
    publisher: Py<PyPublisher>,
    seq: u64,
    slot: Slot,
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

/// A contiguous buffer's bytes, or `InvalidArgument`.
fn contiguous(data: &Bound<'_, PyAny>) -> PyResult<PyUntypedBuffer> {
    let buf = PyUntypedBuffer::get(data)?;
    if !buf.is_c_contiguous() {
        return Err(raise(
            ErrorCode::InvalidArgument,
            "the frame buffer must be C-contiguous (numpy.ascontiguousarray)",
        ));
    }
    Ok(buf)
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
        let buf = contiguous(data)?;
        let need = self.layout.packed_bytes();
        if buf.len_bytes() as u64 != need {
            return Err(raise(
                ErrorCode::InvalidArgument,
                &format!(
                    "the frame has {} bytes; a packed {}x{} {} frame has {need}",
                    buf.len_bytes(),
                    self.layout.width,
                    self.layout.height,
                    self.layout.pixel_format().map_or("?", |f| f.name())
                ),
            ));
        }
        let lease = self.with_publisher(py, |p| p.loan_detached()).py()?;
        // Copy with the GIL held: no Python code can change the buffer
        // meanwhile.
        // SAFETY: the exporter keeps `len_bytes` readable bytes at
        // `buf_ptr` while `buf` lives; the loaned slot's `len` bytes are
        // ours to write until commit (the publisher lock is not needed for
        // that: only this call knows the lease).
        let (src, dst) = unsafe {
            (
                std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()),
                std::slice::from_raw_parts_mut(lease.data, lease.len),
            )
        };
        for (to, from, len) in self.layout.packed_rows() {
            let (to, from, len) = (to as usize, from as usize, len as usize);
            dst[to..to + len].copy_from_slice(&src[from..from + len]);
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

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| {
            self.publisher
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    #[getter]
    fn key(&self) -> &str {
        &self.key
    }
    #[getter]
    fn width(&self) -> u32 {
        self.layout.width
    }
    #[getter]
    fn height(&self) -> u32 {
        self.layout.height
    }
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
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.abort(py)?;
        Ok(false)
    }
}
