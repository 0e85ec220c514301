//! `CuframesFrame`: a frame held in place, released explicitly, by a
//! `with` block, or when the last view of it goes.

use crate::dlpack::{
    self, DLPackView, DlDevice, Keep, Owner, Request, TensorSpec, Track, DEVICE_CPU, DEVICE_CUDA,
};
use crate::enums::PyPixelFormat;
use crate::errors::{raise, IntoPy};
use crate::holds::{Holding, Holds, Item};
use crate::planes::Slot;
use cuframes::{ErrorCode, Frame};
use cuframes_cuda::{CudaFrame, RawStream};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::borrow::Cow;
use std::sync::Arc;

impl Keep for Frame {}

impl Keep for CudaFrame {
    fn use_on(&self, stream: usize) -> cuframes::Result<()> {
        CudaFrame::use_on(self, stream as RawStream)
    }
}

/// A frame in host or GPU memory.
#[derive(Clone)]
pub enum Held {
    /// A frame in host shared memory.
    Host(Arc<Frame>),
    /// A frame in GPU memory (CUDA IPC or VMM).
    Cuda(Arc<CudaFrame>),
}

impl Item for Held {
    const CLASS: &'static str = "CuframesFrame";
    const NOUN: &'static str = "frame";

    fn owner(&self) -> Owner {
        match self {
            Held::Host(f) => f.clone(),
            Held::Cuda(f) => f.clone(),
        }
    }
}

impl Held {
    /// The ring-level frame (its seq, layout, timestamps).
    pub fn host(&self) -> &Frame {
        match self {
            Held::Host(f) => f,
            Held::Cuda(f) => <CudaFrame as AsRef<Frame>>::as_ref(f),
        }
    }

    /// A tightly packed copy (from the GPU for device frames).
    fn packed(&self) -> cuframes::Result<Vec<u8>> {
        match self {
            Held::Host(f) => Ok(f.to_packed()),
            Held::Cuda(f) => f.copy_to_host(),
        }
    }

    /// Where plane 0 starts, and on which device.
    fn placement(&self) -> (usize, DlDevice) {
        match self {
            Held::Host(f) => (
                f.as_ptr() as usize,
                DlDevice {
                    device_type: DEVICE_CPU,
                    device_id: 0,
                },
            ),
            Held::Cuda(f) => (
                f.base_ptr() as usize,
                DlDevice {
                    device_type: DEVICE_CUDA,
                    device_id: f.device() as i32,
                },
            ),
        }
    }
}

/// What stays readable about a frame without touching its memory.
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Sequence number.
    seq: u64,
    /// The publisher's timestamp.
    pts_ns: i64,
    /// Monotonic commit time.
    commit_ns: u64,
    /// Commit-to-handout latency.
    latency_ns: u64,
    /// Where the bytes are and how they are laid out.
    slot: Slot,
}

/// A frame from [`CuframesSubscriber.next_frame`]. Its slot stays held —
/// the publisher cannot overwrite it — until `release()`, the end of a
/// `with` block, or garbage collection; array views (`y`, `uv`, DLPack
/// capsules and the tensors made from them) keep it held until they are
/// gone too, so a view never shows a torn frame. After `release()` every
/// property and method but `released`, `release()` and `repr()` raises
/// `CuframesReleasedError`.
#[pyclass(name = "CuframesFrame", module = "cuframes._native", frozen)]
pub struct PyFrame {
    /// The frame and this object's hold on it, until released.
    held: Holding<Held>,
    /// What stays readable without touching the frame's memory.
    meta: Meta,
}

impl PyFrame {
    /// Wraps a frame just taken by a subscriber whose holders are `holds`.
    pub fn new(held: Held, latency_ns: u64, holds: Arc<Holds>) -> Self {
        let (base, device) = held.placement();
        let frame = held.host();
        let slot = Slot {
            layout: *frame.layout(),
            format: frame.format(),
            base,
            device,
            read_only: true,
        };
        let meta = Meta {
            seq: frame.seq(),
            pts_ns: frame.pts_ns(),
            commit_ns: frame.commit_ns(),
            latency_ns,
            slot,
        };
        Self {
            held: Holding::new(held, meta.seq, holds),
            meta,
        }
    }

    /// The metadata, or `CuframesReleasedError`.
    fn meta(&self) -> PyResult<&Meta> {
        self.held.check().map(|()| &self.meta)
    }

    /// A view of `spec` (`what` names it in errors); `origin` names the
    /// call that made it, `visible` says whether the view object itself
    /// reaches the user, `numpy` whether a numpy property imports it.
    fn view(
        &self,
        spec: Option<TensorSpec>,
        what: impl FnOnce() -> String,
        origin: impl Into<Cow<'static, str>>,
        visible: bool,
        numpy: bool,
    ) -> PyResult<DLPackView> {
        let owner: Owner = self.held.get()?.owner();
        let spec = spec.ok_or_else(|| {
            raise(
                ErrorCode::InvalidArgument,
                &format!(
                    "{} frames have no {}",
                    self.meta.slot.format.name().to_uppercase(),
                    what()
                ),
            )
        })?;
        let track = Track {
            holds: self.held.holds().clone(),
            seq: self.meta.seq,
            origin: origin.into(),
            numpy,
        };
        Ok(DLPackView::tracked(spec, owner, track, visible))
    }

    /// A view of plane `i`.
    fn plane_view(
        &self,
        i: usize,
        origin: impl Into<Cow<'static, str>>,
        visible: bool,
        numpy: bool,
    ) -> PyResult<DLPackView> {
        self.view(
            self.meta.slot.plane(i),
            || format!("plane {i}"),
            origin,
            visible,
            numpy,
        )
    }

    /// A view of the whole picture as one array.
    fn whole_view(&self, origin: &'static str, numpy: bool) -> PyResult<DLPackView> {
        self.view(
            self.meta.slot.whole(),
            || "single-array view".to_owned(),
            origin,
            false,
            numpy,
        )
    }
}

#[pymethods]
impl PyFrame {
    /// Sequence number: 1 for the stream's first frame, then +1 per frame.
    #[getter]
    fn seq(&self) -> PyResult<u64> {
        Ok(self.meta()?.seq)
    }
    /// Presentation timestamp the publisher gave, nanoseconds.
    #[getter]
    fn pts_ns(&self) -> PyResult<i64> {
        Ok(self.meta()?.pts_ns)
    }
    /// Monotonic clock reading at commit, nanoseconds.
    #[getter]
    fn commit_ns(&self) -> PyResult<u64> {
        Ok(self.meta()?.commit_ns)
    }
    /// Commit-to-handout latency of this frame, nanoseconds.
    #[getter]
    fn latency_ns(&self) -> PyResult<u64> {
        Ok(self.meta()?.latency_ns)
    }
    /// Pixel format (a `PixelFormat`).
    #[getter]
    fn format(&self) -> PyResult<PyPixelFormat> {
        Ok(self.meta()?.slot.format.into())
    }
    /// Width in pixels.
    #[getter]
    fn width(&self) -> PyResult<u32> {
        Ok(self.meta()?.slot.layout.width)
    }
    /// Height in pixels.
    #[getter]
    fn height(&self) -> PyResult<u32> {
        Ok(self.meta()?.slot.layout.height)
    }
    /// Bytes from row to row of the first plane.
    #[getter]
    fn pitch_y(&self) -> PyResult<u32> {
        Ok(self.pitches()?.first().copied().unwrap_or(0))
    }
    /// Bytes from row to row of the chroma plane (0 for one-plane formats).
    #[getter]
    fn pitch_uv(&self) -> PyResult<u32> {
        Ok(self.pitches()?.get(1).copied().unwrap_or(0))
    }
    /// Row pitch of every plane.
    #[getter]
    fn pitches(&self) -> PyResult<Vec<u32>> {
        let l = &self.meta()?.slot.layout;
        Ok(l.planes().iter().map(|p| p.pitch).collect())
    }
    /// Number of planes (2 for NV12/P010, else 1).
    #[getter]
    fn plane_count(&self) -> PyResult<usize> {
        Ok(self.meta()?.slot.layout.planes().len())
    }
    /// Address of the first plane in GPU memory; 0 for host-memory frames
    /// (see `data_ptr`).
    #[getter]
    fn cuda_ptr(&self) -> PyResult<usize> {
        let m = self.meta()?;
        Ok(if m.slot.device.device_type == DEVICE_CPU {
            0
        } else {
            m.slot.base + m.slot.layout.planes()[0].offset as usize
        })
    }
    /// Address of the first plane, in whichever memory the frame lives.
    #[getter]
    fn data_ptr(&self) -> PyResult<usize> {
        let m = self.meta()?;
        Ok(m.slot.base + m.slot.layout.planes()[0].offset as usize)
    }
    /// `"host"` or `"cuda"`.
    #[getter]
    fn memory(&self) -> PyResult<&'static str> {
        let m = self.meta()?;
        Ok(if m.slot.device.device_type == DEVICE_CPU {
            "host"
        } else {
            "cuda"
        })
    }
    /// Bytes of the picture without pitch padding.
    #[getter]
    fn nbytes(&self) -> PyResult<u64> {
        Ok(self.meta()?.slot.layout.packed_bytes())
    }
    /// Whether `release()` was called.
    #[getter]
    fn released(&self) -> bool {
        self.held.released()
    }

    /// Gives the slot back to the publisher (once no view of it remains).
    /// Idempotent.
    fn release(&self, py: Python<'_>) {
        self.held.release(py);
    }

    /// `with frame:` releases the frame at the end of the block.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Releases the frame.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.release(py);
        false
    }

    /// The luma (or only) plane as a DLPack capsule.
    #[pyo3(signature = (*, max_version=None))]
    fn dlpack_y<'py>(
        &self,
        py: Python<'py>,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.capsule(py, 0, max_version)
    }

    /// The interleaved chroma plane of NV12/P010 as a DLPack capsule of
    /// shape `(height/2, width/2, 2)`.
    #[pyo3(signature = (*, max_version=None))]
    fn dlpack_uv<'py>(
        &self,
        py: Python<'py>,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.capsule(py, 1, max_version)
    }

    /// The DLPack protocol over the whole picture (one plane; for
    /// NV12/P010 the `(height*3/2, width)` array).
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.whole_view("frame", false)?
            .answer(py, Request::new(stream, max_version, dl_device, copy))
    }

    /// `(device_type, device_id)` of the frame's memory: `(1, 0)` for host
    /// memory, `(2, gpu)` for CUDA.
    fn __dlpack_device__(&self) -> PyResult<(i32, i32)> {
        let d = self.meta()?.slot.device;
        Ok((d.device_type, d.device_id))
    }

    /// Plane `i` as an object with the DLPack protocol (for
    /// `torch.from_dlpack`, `cupy.from_dlpack`, `numpy.from_dlpack`).
    fn plane(&self, i: usize) -> PyResult<DLPackView> {
        self.plane_view(i, format!("frame.plane({i})"), true, false)
    }

    /// The luma (or only) plane as a read-only numpy array, no copy.
    #[getter]
    fn y<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.plane_view(0, "frame.y", false, true)?)
    }

    /// The chroma plane of NV12/P010 as a read-only numpy array of shape
    /// `(height/2, width/2, 2)`, no copy.
    #[getter]
    fn uv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.plane_view(1, "frame.uv", false, true)?)
    }

    /// Every plane as a read-only numpy array.
    #[getter]
    fn planes<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let n = self.meta()?.slot.layout.planes().len();
        (0..n)
            .map(|i| {
                let origin = format!("frame.planes[{i}]");
                dlpack::to_numpy(py, self.plane_view(i, origin, false, true)?)
            })
            .collect()
    }

    /// The whole picture as one read-only numpy array (see `__dlpack__`).
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        dlpack::to_numpy(py, self.whole_view("frame.numpy()", true)?)
    }

    /// A tightly packed copy of the picture (planes in order, no padding).
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let held = self.held.get()?;
        let packed = py.detach(|| held.packed()).py()?;
        Ok(pyo3::types::PyBytes::new(py, &packed))
    }

    /// Checks a frame of the test pattern (`cuframes publish --testsrc`,
    /// `WriteLease.fill_test_pattern`): its stamp names this seq and its
    /// pixels match the stamp's checksum. Raises `CuframesCorruptError`
    /// for a torn, reused or foreign frame.
    fn verify_test_pattern(&self, py: Python<'_>) -> PyResult<()> {
        let held = self.held.get()?;
        let layout = self.meta.slot.layout;
        let seq = self.meta.seq;
        let checked = py.detach(|| match &held {
            Held::Host(f) => Ok(cuframes::testsrc::verify(&layout, f.data(), seq)),
            Held::Cuda(f) => f.copy_to_host().map(|packed| {
                let mut image = vec![0u8; layout.slot_bytes as usize];
                for (slot, p, len) in layout.packed_rows() {
                    let (slot, p, len) = (slot as usize, p as usize, len as usize);
                    image[slot..slot + len].copy_from_slice(&packed[p..p + len]);
                }
                cuframes::testsrc::verify(&layout, &image, seq)
            }),
        });
        checked.py()?.map_err(|d| {
            raise(
                ErrorCode::Corrupt,
                &format!("frame {seq} fails the test pattern: {d:?}"),
            )
        })
    }

    /// The frame's properties as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.meta()?;
        let d = PyDict::new(py);
        d.set_item("seq", m.seq)?;
        d.set_item("pts_ns", m.pts_ns)?;
        d.set_item("commit_ns", m.commit_ns)?;
        d.set_item("latency_ns", m.latency_ns)?;
        d.set_item("format", m.slot.format.name())?;
        d.set_item("width", m.slot.layout.width)?;
        d.set_item("height", m.slot.layout.height)?;
        d.set_item("pitches", self.pitches()?)?;
        Ok(d)
    }

    /// `CuframesFrame(seq=…, format=…, WxH, pts_ns=…)`, usable after release.
    fn __repr__(&self) -> String {
        let m = &self.meta;
        let state = if self.released() { ", released" } else { "" };
        format!(
            "CuframesFrame(seq={}, format={}, {}x{}, pts_ns={}{state})",
            m.seq,
            m.slot.format.name().to_uppercase(),
            m.slot.layout.width,
            m.slot.layout.height,
            m.pts_ns
        )
    }
}

impl PyFrame {
    /// A capsule of plane `plane` (the seed's `dlpack_y()`/`dlpack_uv()`).
    fn capsule<'py>(
        &self,
        py: Python<'py>,
        plane: usize,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        let origin = if plane == 0 {
            "frame.dlpack_y()"
        } else {
            "frame.dlpack_uv()"
        };
        self.plane_view(plane, origin, false, false)?
            .export(py, versioned)
    }
}
