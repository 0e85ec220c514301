//! DLPack export of frame and loan planes: legacy (`dltensor`) and
//! versioned (`dltensor_versioned`) capsules, as the array-API protocol
//! asks. The capsule keeps its owner (a held frame, a publisher mapping)
//! alive until the consumer's array is gone.

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_void, CStr};
use std::sync::Arc;

/// `kDLCPU`.
pub const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`.
pub const DEVICE_CUDA: i32 = 2;

const DLPACK_MAJOR: u32 = 1;
const DLPACK_MINOR: u32 = 0;
const FLAG_READ_ONLY: u64 = 1;
const KDL_UINT: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlDevice {
    pub device_type: i32,
    pub device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DlTensor {
    data: *mut c_void,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DlManagedTensor {
    dl_tensor: DlTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

#[repr(C)]
struct DlPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DlManagedTensorVersioned {
    version: DlPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DlTensor,
}

/// What an exported view keeps alive, and how it lets another GPU stream
/// read it.
pub trait Keep: Send + Sync {
    /// Orders CUDA stream `stream` after the data is ready (and the
    /// release after `stream`'s reads). Host memory needs nothing.
    fn use_on(&self, _stream: usize) -> cuframes::Result<()> {
        Ok(())
    }
}

/// Whatever must outlive an exported view.
pub type Owner = Arc<dyn Keep>;

/// One strided array of unsigned integers over memory kept by an owner.
#[derive(Clone, Copy, Debug)]
pub struct TensorSpec {
    /// First element (a host or device address).
    pub data: usize,
    pub device: DlDevice,
    /// Element width: 8 or 16.
    pub bits: u8,
    pub ndim: usize,
    pub shape: [i64; 3],
    /// In elements, as DLPack counts them.
    pub strides: [i64; 3],
    pub read_only: bool,
}

/// Shape and strides must live as long as the tensor: they sit beside the
/// owner in the manager context.
struct Context {
    shape: [i64; 3],
    strides: [i64; 3],
    _owner: Owner,
}

impl TensorSpec {
    fn tensor(&self, ctx: &mut Context) -> DlTensor {
        DlTensor {
            data: self.data as *mut c_void,
            device: self.device,
            ndim: self.ndim as i32,
            dtype: DlDataType {
                code: KDL_UINT,
                bits: self.bits,
                lanes: 1,
            },
            shape: ctx.shape.as_mut_ptr(),
            strides: ctx.strides.as_mut_ptr(),
            byte_offset: 0,
        }
    }

    fn context(&self, owner: Owner) -> *mut Context {
        Box::into_raw(Box::new(Context {
            shape: self.shape,
            strides: self.strides,
            _owner: owner,
        }))
    }
}

/// The two managed-tensor flavours, told apart by capsule name.
trait Managed: Sized {
    const NAME: &'static CStr;
    fn build(spec: &TensorSpec, ctx: *mut Context) -> Self;
    fn deleter(&self) -> Option<unsafe extern "C" fn(*mut Self)>;
}

impl Managed for DlManagedTensor {
    const NAME: &'static CStr = c"dltensor";
    fn build(spec: &TensorSpec, ctx: *mut Context) -> Self {
        // SAFETY: `ctx` was just boxed by `TensorSpec::context` and is only
        // freed by the deleter below.
        let dl_tensor = spec.tensor(unsafe { &mut *ctx });
        Self {
            dl_tensor,
            manager_ctx: ctx.cast(),
            deleter: Some(delete::<Self>),
        }
    }
    fn deleter(&self) -> Option<unsafe extern "C" fn(*mut Self)> {
        self.deleter
    }
}

impl Managed for DlManagedTensorVersioned {
    const NAME: &'static CStr = c"dltensor_versioned";
    fn build(spec: &TensorSpec, ctx: *mut Context) -> Self {
        // SAFETY: as for the legacy flavour.
        let dl_tensor = spec.tensor(unsafe { &mut *ctx });
        Self {
            version: DlPackVersion {
                major: DLPACK_MAJOR,
                minor: DLPACK_MINOR,
            },
            manager_ctx: ctx.cast(),
            deleter: Some(delete::<Self>),
            flags: if spec.read_only { FLAG_READ_ONLY } else { 0 },
            dl_tensor,
        }
    }
    fn deleter(&self) -> Option<unsafe extern "C" fn(*mut Self)> {
        self.deleter
    }
}

trait HasContext {
    fn context(&self) -> *mut c_void;
}
impl HasContext for DlManagedTensor {
    fn context(&self) -> *mut c_void {
        self.manager_ctx
    }
}
impl HasContext for DlManagedTensorVersioned {
    fn context(&self) -> *mut c_void {
        self.manager_ctx
    }
}

/// The deleter a consumer calls when done (any thread, GIL or not: it only
/// drops Rust values).
unsafe extern "C" fn delete<M: Managed + HasContext>(p: *mut M) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` came from `Box::into_raw` in `export` and DLPack calls
    // the deleter exactly once; its context was boxed by `TensorSpec::context`.
    unsafe {
        let m = Box::from_raw(p);
        drop(Box::from_raw(m.context().cast::<Context>()));
    }
}

/// Frees a capsule nobody consumed. A consumer renames the capsule to
/// `used_…` when it takes ownership; then the tensor is no longer ours.
unsafe extern "C" fn capsule_destructor<M: Managed>(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with a live capsule; `IsValid` with our name
    // neither raises nor matches a renamed (consumed) capsule, and then the
    // pointer is the `M` boxed in `export`.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, M::NAME.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(capsule, M::NAME.as_ptr()).cast::<M>();
            if let Some(d) = (*p).deleter() {
                d(p);
            }
        }
    }
}

fn capsule<'py, M: Managed + HasContext>(
    py: Python<'py>,
    spec: &TensorSpec,
    owner: Owner,
) -> PyResult<Bound<'py, PyAny>> {
    let managed = Box::into_raw(Box::new(M::build(spec, spec.context(owner))));
    // SAFETY: `managed` is a valid boxed tensor; on success the capsule owns
    // it (its destructor frees it unless consumed), on failure we free it.
    unsafe {
        let cap = ffi::PyCapsule_New(
            managed.cast(),
            M::NAME.as_ptr(),
            Some(capsule_destructor::<M>),
        );
        if cap.is_null() {
            delete::<M>(managed);
        }
        Bound::from_owned_ptr_or_err(py, cap)
    }
}

/// A capsule for `spec`, versioned when the consumer asked for DLPack >= 1.
pub fn export<'py>(
    py: Python<'py>,
    spec: &TensorSpec,
    owner: Owner,
    versioned: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if versioned {
        capsule::<DlManagedTensorVersioned>(py, spec, owner)
    } else {
        capsule::<DlManagedTensor>(py, spec, owner)
    }
}

/// The keyword arguments of `__dlpack__`, checked against what we export.
pub struct Request<'a, 'py> {
    pub max_version: Option<(u32, u32)>,
    pub dl_device: Option<(i32, i32)>,
    pub copy: Option<bool>,
    pub stream: Option<&'a Bound<'py, PyAny>>,
}

impl Request<'_, '_> {
    /// Whether to hand out a versioned capsule, or why the request cannot
    /// be met (`BufferError`, as the protocol says).
    pub fn check(&self, spec: &TensorSpec) -> PyResult<bool> {
        if let Some((t, id)) = self.dl_device {
            if (t, id) != (spec.device.device_type, spec.device.device_id) {
                return Err(PyBufferError::new_err(format!(
                    "the frame lives on device ({}, {}); cannot export to ({t}, {id})",
                    spec.device.device_type, spec.device.device_id
                )));
            }
        }
        if self.copy == Some(true) {
            return Err(PyBufferError::new_err(
                "cuframes exports views only (copy=True): copy the imported array instead",
            ));
        }
        if let Some(stream) = self.stream {
            // Host memory needs no stream; device frames are ordered on the
            // subscriber's consumer stream before they are handed out.
            if spec.device.device_type == DEVICE_CPU && !stream.is_none() {
                let v: Option<i64> = stream.extract().ok();
                if v != Some(-1) {
                    return Err(PyBufferError::new_err(
                        "a host-memory frame takes stream=None",
                    ));
                }
            }
        }
        Ok(self.max_version.is_some_and(|(major, _)| major >= 1))
    }

    /// The CUDA stream the consumer will read on, per the protocol: `None`
    /// is the legacy default stream (handle 1), `-1` asks for no ordering.
    pub fn cuda_stream(&self) -> PyResult<Option<usize>> {
        match self.stream {
            None => Ok(Some(1)),
            Some(s) if s.is_none() => Ok(Some(1)),
            Some(s) => match s.extract::<i64>()? {
                -1 => Ok(None),
                0 => Err(PyBufferError::new_err(
                    "stream=0 is ambiguous for CUDA; pass 1 (legacy default) or 2 (per-thread default)",
                )),
                v if v > 0 => Ok(Some(v as usize)),
                v => Err(PyBufferError::new_err(format!(
                    "stream {v} is not a CUDA stream"
                ))),
            },
        }
    }
}

/// One plane (or whole frame) as an object with the DLPack protocol, for
/// `numpy.from_dlpack` and friends.
#[pyclass(name = "DLPackView", module = "cuframes._native", frozen)]
pub struct DLPackView {
    spec: TensorSpec,
    owner: Owner,
}

impl DLPackView {
    pub fn new(spec: TensorSpec, owner: Owner) -> Self {
        Self { spec, owner }
    }

    /// A capsule of this view.
    pub fn export<'py>(&self, py: Python<'py>, versioned: bool) -> PyResult<Bound<'py, PyAny>> {
        export(py, &self.spec, self.owner.clone(), versioned)
    }

    /// The answer to a `__dlpack__` call: for a GPU frame, the consumer's
    /// stream is first ordered after the frame's publish.
    pub fn answer<'py>(
        &self,
        py: Python<'py>,
        request: Request<'_, 'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let versioned = request.check(&self.spec)?;
        if self.spec.device.device_type == DEVICE_CUDA {
            if let Some(stream) = request.cuda_stream()? {
                self.owner.use_on(stream).map_err(crate::errors::to_py)?;
            }
        }
        self.export(py, versioned)
    }
}

#[pymethods]
impl DLPackView {
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.answer(
            py,
            Request {
                max_version,
                dl_device,
                copy,
                stream,
            },
        )
    }

    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.spec.device.device_type, self.spec.device.device_id)
    }

    /// `(rows, …)` of the view.
    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.spec.shape[..self.spec.ndim].to_vec()
    }
}

/// `numpy.from_dlpack(view)`: a zero-copy array.
pub fn to_numpy<'py>(py: Python<'py>, view: DLPackView) -> PyResult<Bound<'py, PyAny>> {
    if view.spec.device.device_type != DEVICE_CPU {
        return Err(crate::errors::raise(
            cuframes::ErrorCode::InvalidArgument,
            "the frame is in GPU memory: numpy cannot view it; use \
             torch.from_dlpack(frame.plane(i)) or cupy.from_dlpack(...)",
        ));
    }
    let read_only = view.spec.read_only;
    let view = Bound::new(py, view)?;
    let array = py.import("numpy")?.call_method1("from_dlpack", (view,))?;
    if read_only {
        // Legacy capsules (numpy < 2.1 asks for them) cannot say read-only.
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("write", false)?;
        array.call_method("setflags", (), Some(&kwargs))?;
    }
    Ok(array)
}
