//! The consumer side of DLPack, for `Publisher.publish_from`: takes a
//! producer's tensor (a torch/CuPy tensor, a numpy array, or a tuple of
//! them, one per plane), reads its `DLTensor`, and matches it against the
//! stream's layout: where each plane's rows are and how far apart.

use crate::dlpack::{
    DlManagedTensor, DlManagedTensorVersioned, DlTensor, DEVICE_CPU, DEVICE_CUDA, KDL_UINT,
};
use crate::errors::raise;
use cuframes::{ErrorCode, FrameLayout};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// `kDLCUDAHost`: page-locked host memory, readable by the CPU.
const DEVICE_CUDA_HOST: i32 = 3;
/// Dimensions a frame or plane tensor may have (1 to 3); more is refused.
const MAX_NDIM: usize = 3;

/// Where a source lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Host memory (`kDLCPU`, `kDLCUDAHost`).
    Host,
    /// Memory of CUDA device `n` (`kDLCUDA`).
    Cuda(i32),
}

impl Place {
    /// From a `(device_type, device_id)` pair, or a typed error.
    fn of(device: (i32, i32)) -> PyResult<Place> {
        match device {
            (DEVICE_CPU | DEVICE_CUDA_HOST, _) => Ok(Place::Host),
            (DEVICE_CUDA, id) => Ok(Place::Cuda(id)),
            (t, id) => Err(invalid(&format!(
                "publish_from: the data lives on DLPack device ({t}, {id}); cuframes takes host \
                 memory (kDLCPU) or CUDA device memory (kDLCUDA)"
            ))),
        }
    }

    /// How errors name it.
    pub fn name(self) -> String {
        match self {
            Place::Host => "host memory".to_owned(),
            Place::Cuda(n) => format!("CUDA device {n}"),
        }
    }
}

/// An `InvalidArgument` error.
fn invalid(m: &str) -> PyErr {
    raise(ErrorCode::InvalidArgument, m)
}

/// What a producer's `__dlpack__` gave, read from its capsule.
pub struct Imported {
    /// The first element's address (`data + byte_offset`).
    data: u64,
    /// `(device_type, device_id)`.
    device: (i32, i32),
    /// `(code, bits, lanes)`.
    dtype: (u8, u8, u16),
    /// Sizes.
    shape: Vec<i64>,
    /// Strides in elements (`None`: compact row-major).
    strides: Option<Vec<i64>>,
}

/// The objects `publish_from` was given: one frame tensor, or one tensor
/// per plane (a tuple or list).
pub fn sources<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(t.iter().collect());
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(l.iter().collect());
    }
    Ok(vec![obj.clone()])
}

/// Where `objs` live (all in one place), from `__dlpack_device__`, asked
/// before anything is exported.
pub fn place(objs: &[Bound<'_, PyAny>]) -> PyResult<Place> {
    let mut found: Option<Place> = None;
    for (i, o) in objs.iter().enumerate() {
        if !o.hasattr("__dlpack__")? {
            return Err(invalid(&format!(
                "publish_from takes objects with the DLPack protocol (__dlpack__: a torch or \
                 CuPy tensor, a numpy array); got {} (publish() takes bytes-like buffers)",
                type_name(o)
            )));
        }
        let device: (i32, i32) = if o.hasattr("__dlpack_device__")? {
            o.call_method0("__dlpack_device__")?.extract()?
        } else {
            (DEVICE_CPU, 0)
        };
        let p = Place::of(device)?;
        match found {
            Some(q) if q != p => {
                return Err(invalid(&format!(
                    "publish_from: the planes live in different places ({} and {} for plane \
                     {i}): pass them all on one device",
                    q.name(),
                    p.name()
                )))
            }
            _ => found = Some(p),
        }
    }
    found.ok_or_else(|| invalid("publish_from: no planes given"))
}

/// The Python type name of `o`, for messages.
fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// Exports `obj` (`__dlpack__`, asking for a versioned capsule where the
/// producer knows the keyword), passing `stream` (for device data: the
/// stream we will read on, which the producer orders after its work).
/// Returns the capsule, which keeps the data alive while it lives (it is
/// never renamed: dropping it lets the producer free the tensor), and
/// what it describes.
pub fn export<'py>(
    obj: &Bound<'py, PyAny>,
    stream: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Imported)> {
    let py = obj.py();
    let kwargs = PyDict::new(py);
    if let Some(s) = stream {
        kwargs.set_item("stream", s)?;
    }
    kwargs.set_item("max_version", (1, 0))?;
    let capsule = match obj.call_method("__dlpack__", (), Some(&kwargs)) {
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            // A producer of DLPack < 1.0 (no max_version keyword).
            kwargs.del_item("max_version")?;
            obj.call_method("__dlpack__", (), Some(&kwargs))?
        }
        r => r?,
    };
    let imported = read(&capsule)?;
    Ok((capsule, imported))
}

/// Reads the tensor of a `dltensor` or `dltensor_versioned` capsule.
fn read(capsule: &Bound<'_, PyAny>) -> PyResult<Imported> {
    let cap = capsule.as_ptr();
    // SAFETY: `IsValid` accepts any object (false for non-capsules and
    // other names) and raises nothing.
    let versioned = unsafe { ffi::PyCapsule_IsValid(cap, c"dltensor_versioned".as_ptr()) } == 1;
    // SAFETY: as above.
    let legacy = unsafe { ffi::PyCapsule_IsValid(cap, c"dltensor".as_ptr()) } == 1;
    let tensor: *const DlTensor = if versioned {
        // SAFETY: a valid capsule of that name holds a non-null pointer to
        // the producer's `DLManagedTensorVersioned`, alive while the
        // capsule is (we hold it).
        let m = unsafe {
            &*ffi::PyCapsule_GetPointer(cap, c"dltensor_versioned".as_ptr())
                .cast::<DlManagedTensorVersioned>()
        };
        if m.version.major != 1 {
            return Err(invalid(&format!(
                "publish_from: the producer speaks DLPack {}.{}; cuframes reads 1.x",
                m.version.major, m.version.minor
            )));
        }
        &m.dl_tensor
    } else if legacy {
        // SAFETY: as above, for the legacy `DLManagedTensor`.
        let m = unsafe {
            &*ffi::PyCapsule_GetPointer(cap, c"dltensor".as_ptr()).cast::<DlManagedTensor>()
        };
        &m.dl_tensor
    } else {
        return Err(invalid(
            "publish_from: __dlpack__ returned no unconsumed DLPack capsule",
        ));
    };
    // SAFETY: the producer's tensor, alive with the capsule.
    let t = unsafe { &*tensor };
    let ndim = usize::try_from(t.ndim).unwrap_or(usize::MAX);
    if ndim == 0 || ndim > MAX_NDIM {
        return Err(invalid(&format!(
            "publish_from: a {}-dimensional tensor; frames and planes have 1 to {MAX_NDIM} \
             dimensions",
            t.ndim
        )));
    }
    // SAFETY: DLPack: `shape` holds `ndim` sizes, and `strides` is null or
    // holds `ndim` strides, alive with the capsule.
    let shape = unsafe { std::slice::from_raw_parts(t.shape, ndim) }.to_vec();
    let strides = (!t.strides.is_null())
        // SAFETY: as above.
        .then(|| unsafe { std::slice::from_raw_parts(t.strides, ndim) }.to_vec());
    Ok(Imported {
        data: (t.data as u64).wrapping_add(t.byte_offset),
        device: (t.device.device_type, t.device.device_id),
        dtype: (t.dtype.code, t.dtype.bits, t.dtype.lanes),
        shape,
        strides,
    })
}

/// One plane of a source picture.
#[derive(Clone, Copy, Debug)]
pub struct SrcPlane {
    /// Address of its first row.
    pub ptr: u64,
    /// Bytes from one row to the next (>= `row_bytes`).
    pub pitch: u64,
    /// Bytes per row.
    pub row_bytes: u32,
    /// Rows.
    pub rows: u32,
}

/// One plane's geometry in the stream's format.
struct PlaneShape {
    /// Rows.
    rows: u32,
    /// Pixels per row (pairs for interleaved chroma).
    cols: u32,
    /// Channels per pixel.
    channels: u32,
    /// Bytes per row.
    row_bytes: u32,
}

/// What the stream's frames look like, for matching tensors against.
pub struct Expect {
    /// Bytes per element (1, or 2 for P010).
    elem: u32,
    /// Each plane.
    planes: Vec<PlaneShape>,
    /// `WxH FORMAT`, for messages.
    what: String,
}

impl Expect {
    /// The shapes of `layout`'s planes.
    pub fn new(layout: &FrameLayout) -> Expect {
        let format = layout.pixel_format().expect("a validated layout");
        let elem = format.bytes_per_element();
        let planes = (0..layout.planes().len())
            .filter_map(|i| format.plane_shape(i, layout.width, layout.height))
            .map(|(row_bytes, rows, channels)| PlaneShape {
                rows,
                cols: row_bytes / elem / channels,
                channels,
                row_bytes,
            })
            .collect();
        Expect {
            elem,
            planes,
            what: format!(
                "{}x{} {}",
                layout.width,
                layout.height,
                format.name().to_uppercase()
            ),
        }
    }

    /// The element type's name.
    fn dtype(&self) -> &'static str {
        if self.elem == 2 {
            "uint16"
        } else {
            "uint8"
        }
    }

    /// The shapes plane `i` may have, for messages.
    fn plane_forms(&self, i: usize) -> String {
        let p = &self.planes[i];
        if p.channels == 1 {
            format!("({}, {})", p.rows, p.cols)
        } else {
            format!(
                "({}, {}, {}) or ({}, {})",
                p.rows,
                p.cols,
                p.channels,
                p.rows,
                p.cols * p.channels
            )
        }
    }

    /// Elements of a tightly packed frame.
    fn packed_elems(&self) -> u64 {
        self.planes
            .iter()
            .map(|p| u64::from(p.row_bytes) * u64::from(p.rows))
            .sum::<u64>()
            / u64::from(self.elem)
    }

    /// The shapes a one-tensor frame may have, for messages.
    fn frame_forms(&self) -> String {
        let flat = format!("({},)", self.packed_elems());
        match self.planes.as_slice() {
            [_] => format!("{} or {flat}", self.plane_forms(0)),
            [y, uv] => format!(
                "({}, {}) (the planes' rows one after another) or {flat}, or a tuple of \
                 planes {} and {}",
                y.rows + uv.rows,
                y.row_bytes / self.elem,
                self.plane_forms(0),
                self.plane_forms(1)
            ),
            _ => flat,
        }
    }

    /// The planes of the picture in `tensors` (one frame tensor, or one per
    /// plane), checked against the layout: dtype, shape, rows contiguous
    /// and no closer than a row apart.
    pub fn planes(&self, tensors: &[Imported]) -> PyResult<Vec<SrcPlane>> {
        for t in tensors {
            let (code, bits, lanes) = t.dtype;
            if code != KDL_UINT || u32::from(bits) != self.elem * 8 || lanes != 1 {
                return Err(invalid(&format!(
                    "publish_from: {} frames take {} data; got {} (DLPack type code {code}, \
                     {bits} bits, {lanes} lane(s))",
                    self.what,
                    self.dtype(),
                    dtype_name(t.dtype)
                )));
            }
        }
        match tensors {
            [t] => self.frame(t),
            many if many.len() == self.planes.len() => many
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let p = &self.planes[i];
                    let flat = vec![i64::from(p.cols * p.channels)];
                    let mut forms = vec![flat.clone()];
                    if p.channels > 1 {
                        forms.push(vec![i64::from(p.cols), i64::from(p.channels)]);
                    }
                    let (ptr, pitch) =
                        self.rows(t, i64::from(p.rows), &flat, &forms)
                            .map_err(|m| {
                                invalid(&format!(
                                    "publish_from: plane {i} of a {} frame must be {} {}: {m}",
                                    self.what,
                                    self.plane_forms(i),
                                    self.dtype()
                                ))
                            })?;
                    Ok(SrcPlane {
                        ptr,
                        pitch,
                        row_bytes: p.row_bytes,
                        rows: p.rows,
                    })
                })
                .collect(),
            many => Err(invalid(&format!(
                "publish_from: {} planes given; {} frames have {}",
                many.len(),
                self.what,
                self.planes.len()
            ))),
        }
    }

    /// The planes of one tensor holding the whole frame.
    fn frame(&self, t: &Imported) -> PyResult<Vec<SrcPlane>> {
        let bad = |m: String| {
            invalid(&format!(
                "publish_from: a {} frame in one tensor must be {} {}: {m}",
                self.what,
                self.frame_forms(),
                self.dtype()
            ))
        };
        if t.shape.len() == 1 {
            // Tightly packed: the planes' rows back to back.
            let n = self.packed_elems() as i64;
            if t.shape[0] != n {
                return Err(bad(format!("got shape {}", shape_text(&t.shape))));
            }
            if t.strides.as_ref().is_some_and(|s| s[0] != 1 && n > 1) {
                return Err(bad(format!(
                    "its elements are not contiguous (stride {})",
                    shape_text(t.strides.as_deref().unwrap_or_default())
                )));
            }
            let mut at = t.data;
            return Ok(self
                .planes
                .iter()
                .map(|p| {
                    let plane = SrcPlane {
                        ptr: at,
                        pitch: u64::from(p.row_bytes),
                        row_bytes: p.row_bytes,
                        rows: p.rows,
                    };
                    at += u64::from(p.row_bytes) * u64::from(p.rows);
                    plane
                })
                .collect());
        }
        let rows: u32 = self.planes.iter().map(|p| p.rows).sum();
        let width = self.planes[0].row_bytes / self.elem;
        if self
            .planes
            .iter()
            .any(|p| p.row_bytes != self.planes[0].row_bytes)
        {
            return Err(bad("its planes differ in row size".to_owned()));
        }
        let p0 = &self.planes[0];
        let inner2 = vec![i64::from(width)];
        let forms = if self.planes.len() == 1 && p0.channels > 1 {
            vec![
                inner2.clone(),
                vec![i64::from(p0.cols), i64::from(p0.channels)],
            ]
        } else {
            vec![inner2.clone()]
        };
        let (ptr, pitch) = self
            .rows(t, i64::from(rows), &inner2, &forms)
            .map_err(bad)?;
        let mut at = ptr;
        Ok(self
            .planes
            .iter()
            .map(|p| {
                let plane = SrcPlane {
                    ptr: at,
                    pitch,
                    row_bytes: p.row_bytes,
                    rows: p.rows,
                };
                at += pitch * u64::from(p.rows);
                plane
            })
            .collect())
    }

    /// Checks that `t` is `rows` rows of dense elements shaped as one of
    /// `forms` (the sizes after the first dimension; `flat` is the
    /// two-dimensional form), and returns its address and row pitch in
    /// bytes, or what is wrong.
    fn rows(
        &self,
        t: &Imported,
        rows: i64,
        flat: &[i64],
        forms: &[Vec<i64>],
    ) -> Result<(u64, u64), String> {
        let shape = &t.shape;
        let elem = i64::from(self.elem);
        if shape[0] != rows || !forms.iter().any(|f| f.as_slice() == &shape[1..]) {
            return Err(format!("got shape {}", shape_text(shape)));
        }
        let row_elems: i64 = flat.iter().product();
        let Some(strides) = &t.strides else {
            // Compact row-major.
            return Ok((t.data, (row_elems * elem) as u64));
        };
        // Every dimension after the first dense, as in a compact array.
        let mut dense = 1i64;
        for d in (1..shape.len()).rev() {
            if shape[d] != 1 && strides[d] != dense {
                return Err(format!(
                    "its rows are not contiguous (strides {} in elements; only the row \
                     stride may exceed the row)",
                    shape_text(strides)
                ));
            }
            dense *= shape[d];
        }
        if rows <= 1 {
            return Ok((t.data, (row_elems * elem) as u64));
        }
        let pitch = strides[0];
        if pitch < row_elems {
            return Err(format!(
                "its rows are {pitch} elements apart, less than a row ({row_elems} elements): \
                 rows overlap or run backwards (strides {})",
                shape_text(strides)
            ));
        }
        Ok((t.data, (pitch * elem) as u64))
    }
}

/// `(a, b, c)` as Python writes a tuple.
fn shape_text(v: &[i64]) -> String {
    match v {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A DLPack dtype as numpy would name it.
fn dtype_name((code, bits, lanes): (u8, u8, u16)) -> String {
    let kind = match code {
        0 => "int",
        1 => "uint",
        2 => "float",
        4 => "bfloat",
        5 => "complex",
        6 => "bool",
        _ => "type",
    };
    if lanes == 1 {
        format!("{kind}{bits}")
    } else {
        format!("{kind}{bits}x{lanes}")
    }
}

impl Imported {
    /// Where the data lives.
    pub fn place(&self) -> PyResult<Place> {
        Place::of(self.device)
    }
}
