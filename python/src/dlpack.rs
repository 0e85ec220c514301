//! DLPack export of frame and loan planes: legacy (`dltensor`) and
//! versioned (`dltensor_versioned`) capsules, as the array-API protocol
//! asks. The capsule keeps its owner (a held frame, a publisher mapping)
//! alive until the consumer's array is gone.

use crate::holds::{Holds, Pin, Via};
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::borrow::Cow;
use std::ffi::{c_void, CStr};
use std::sync::{Arc, Weak};

/// `kDLCPU`.
pub const DEVICE_CPU: i32 = 1;
/// `kDLCUDA`.
pub const DEVICE_CUDA: i32 = 2;

/// The DLPack version of versioned capsules.
const DLPACK_MAJOR: u32 = 1;
/// The DLPack minor version of versioned capsules.
const DLPACK_MINOR: u32 = 0;
/// `DLPACK_FLAG_BITMASK_READ_ONLY`.
const FLAG_READ_ONLY: u64 = 1;
/// `kDLUInt`: frames are unsigned integers.
pub const KDL_UINT: u8 = 1;

/// `DLDevice`: where the data lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlDevice {
    /// `DEVICE_CPU` or `DEVICE_CUDA`.
    pub device_type: i32,
    /// Device ordinal (0 for the host).
    pub device_id: i32,
}

/// `DLDataType`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DlDataType {
    /// Type code (`kDLUInt` = 1, ...).
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1 for scalars).
    pub lanes: u16,
}

/// `DLTensor`: a strided array.
#[repr(C)]
pub struct DlTensor {
    /// Data pointer (host or device address).
    pub data: *mut c_void,
    /// Where the data lives.
    pub device: DlDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// Element type.
    pub dtype: DlDataType,
    /// `ndim` sizes.
    pub shape: *mut i64,
    /// `ndim` strides in elements, or null for a compact row-major array.
    pub strides: *mut i64,
    /// Bytes from `data` to the first element.
    pub byte_offset: u64,
}

/// `DLManagedTensor`: the legacy (`dltensor`) capsule payload.
#[repr(C)]
pub struct DlManagedTensor {
    /// The tensor.
    pub dl_tensor: DlTensor,
    /// The producer's context.
    manager_ctx: *mut c_void,
    /// Frees the tensor.
    // SAFETY: the DLPack ABI's deleter type (a C function pointer); the
    // deleters stored here are `delete`, whose contract DLPack meets.
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensor)>,
}

/// `DLPackVersion`.
#[repr(C)]
pub struct DlPackVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// `DLManagedTensorVersioned`: the `dltensor_versioned` payload.
#[repr(C)]
pub struct DlManagedTensorVersioned {
    /// The DLPack version of the producer.
    pub version: DlPackVersion,
    /// The producer's context.
    manager_ctx: *mut c_void,
    /// Frees the tensor.
    // SAFETY: the DLPack ABI's deleter type (a C function pointer); the
    // deleters stored here are `delete`, whose contract DLPack meets.
    deleter: Option<unsafe extern "C" fn(*mut DlManagedTensorVersioned)>,
    /// `DLPACK_FLAG_BITMASK_*`.
    flags: u64,
    /// The tensor.
    pub dl_tensor: DlTensor,
}

/// What an exported view keeps alive, and how it lets another GPU stream
/// read it.
pub trait Keep: Send + Sync {
    /// Orders CUDA stream `stream` after the data is ready (and the
    /// release after `stream`'s reads). Host memory needs nothing.
    ///
    /// Called during `__dlpack__`, on the consumer's thread: the
    /// per-thread default stream (2) is that thread's, and the frame
    /// remembers which thread named it (a release on another thread
    /// synchronises the context instead). Never defer it to the capsule's
    /// consumption or release, which may run on any thread.
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
    /// Where `data` lives.
    pub device: DlDevice,
    /// Element width: 8 or 16.
    pub bits: u8,
    /// Dimensions used of `shape`/`strides` (2 or 3).
    pub ndim: usize,
    /// Size of each dimension.
    pub shape: [i64; 3],
    /// In elements, as DLPack counts them.
    pub strides: [i64; 3],
    /// Whether consumers must not write (subscriber frames).
    pub read_only: bool,
}

/// Shape and strides must live as long as the tensor: they sit beside the
/// owner in the manager context.
struct Context {
    /// The tensor's shape (its `shape` points here).
    shape: [i64; 3],
    /// The tensor's strides (its `strides` points here).
    strides: [i64; 3],
    /// Kept alive until the consumer calls the deleter.
    _owner: Owner,
}

impl TensorSpec {
    /// The `DLTensor` of this array, its shape and strides in `ctx`.
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

    /// A boxed manager context for this array keeping `owner` alive.
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
    /// The capsule name of this flavour.
    const NAME: &'static CStr;
    /// The managed tensor of `spec` with manager context `ctx`.
    fn build(spec: &TensorSpec, ctx: *mut Context) -> Self;
    /// Its deleter.
    // SAFETY: the DLPack ABI's deleter type (a C function pointer); the
    // deleters stored here are `delete`, whose contract DLPack meets.
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
    // SAFETY: the DLPack ABI's deleter type (a C function pointer); the
    // deleters stored here are `delete`, whose contract DLPack meets.
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
    // SAFETY: the DLPack ABI's deleter type (a C function pointer); the
    // deleters stored here are `delete`, whose contract DLPack meets.
    fn deleter(&self) -> Option<unsafe extern "C" fn(*mut Self)> {
        self.deleter
    }
}

/// Access to a managed tensor's `manager_ctx`.
trait HasContext {
    /// The `manager_ctx` pointer.
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
///
/// # Safety
/// `p` is null or a tensor made by `export` whose deleter was not called
/// yet (DLPack calls it at most once).
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
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
/// A tracked capsule's context is a weak reference to its [`Pin`], told
/// here that the capsule is gone.
///
/// # Safety
/// Only Python calls it, once, with the capsule being destroyed.
// SAFETY: callers meet the `# Safety` contract above; the body assumes
// nothing beyond it.
unsafe extern "C" fn capsule_destructor<M: Managed>(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with a live capsule whose pointer is never
    // null (consumers only rename it), so `GetContext` cannot fail; a
    // non-null context is the `Weak<Pin>` leaked in `capsule`. `IsValid`
    // with our name neither raises nor matches a renamed (consumed)
    // capsule, and then the pointer is the `M` boxed in `export`.
    unsafe {
        let context = ffi::PyCapsule_GetContext(capsule);
        if !context.is_null() {
            let pin = Weak::from_raw(context.cast_const().cast::<Pin>());
            if let Some(pin) = pin.upgrade() {
                pin.clear_capsule();
            }
        }
        if ffi::PyCapsule_IsValid(capsule, M::NAME.as_ptr()) == 1 {
            let p = ffi::PyCapsule_GetPointer(capsule, M::NAME.as_ptr()).cast::<M>();
            if let Some(d) = (*p).deleter() {
                d(p);
            }
        }
    }
}

/// A capsule owning a new managed tensor of `spec` that keeps `owner`
/// alive; a tracked one (`pin`) tells its pin when it is destroyed.
fn capsule<'py, M: Managed + HasContext>(
    py: Python<'py>,
    spec: &TensorSpec,
    owner: Owner,
    pin: Option<&Arc<Pin>>,
) -> PyResult<Bound<'py, PyAny>> {
    let managed = Box::into_raw(Box::new(M::build(spec, spec.context(owner))));
    // SAFETY: `managed` is a valid boxed tensor; on success the capsule owns
    // it (its destructor frees it unless consumed), on failure we free it.
    // The context is set before anyone else sees the capsule.
    unsafe {
        let cap = ffi::PyCapsule_New(
            managed.cast(),
            M::NAME.as_ptr(),
            Some(capsule_destructor::<M>),
        );
        if cap.is_null() {
            delete::<M>(managed);
        } else if let Some(pin) = pin {
            let weak = Weak::into_raw(Arc::downgrade(pin));
            if ffi::PyCapsule_SetContext(cap, weak.cast_mut().cast()) == 0 {
                pin.set_capsule(cap);
            } else {
                drop(Weak::from_raw(weak));
                ffi::PyErr_Clear();
            }
        }
        Bound::from_owned_ptr_or_err(py, cap)
    }
}

/// A capsule for `spec`, versioned when the consumer asked for DLPack >= 1.
fn export<'py>(
    py: Python<'py>,
    spec: &TensorSpec,
    owner: Owner,
    pin: Option<&Arc<Pin>>,
    versioned: bool,
) -> PyResult<Bound<'py, PyAny>> {
    if versioned {
        capsule::<DlManagedTensorVersioned>(py, spec, owner, pin)
    } else {
        capsule::<DlManagedTensor>(py, spec, owner, pin)
    }
}

/// The keyword arguments of `__dlpack__`, checked against what we export.
pub struct Request<'a, 'py> {
    /// Highest DLPack version the consumer understands.
    pub max_version: Option<(u32, u32)>,
    /// Device the consumer wants the data on.
    pub dl_device: Option<(i32, i32)>,
    /// `Some(true)`: the consumer wants a copy (refused).
    pub copy: Option<bool>,
    /// The consumer's stream (`None`: not given).
    pub stream: Option<&'a Bound<'py, PyAny>>,
}

impl<'a, 'py> Request<'a, 'py> {
    /// The arguments of a `__dlpack__` call, in the protocol's order.
    pub fn new(
        stream: Option<&'a Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> Self {
        Self {
            max_version,
            dl_device,
            copy,
            stream,
        }
    }

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
    /// and 1 are the legacy default stream (handle 1), 2 the calling
    /// thread's per-thread default stream, `-1` asks for no ordering, 0 is
    /// refused (ambiguous), any other positive value is a stream handle.
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

/// Where a subscriber frame's view came from, so that what it exports can
/// be named when the subscriber runs out of `max_held`.
pub struct Track {
    /// The subscriber's holders.
    pub holds: Arc<Holds>,
    /// The frame's seq.
    pub seq: u64,
    /// The call that made the view (`"frame.y"`, `"frame.dlpack_y()"`).
    pub origin: Cow<'static, str>,
    /// Whether the frame's own numpy property imports it.
    pub numpy: bool,
}

/// One plane (or whole frame) as an object with the DLPack protocol, for
/// `numpy.from_dlpack` and friends.
#[pyclass(name = "DLPackView", module = "cuframes._native", frozen)]
pub struct DLPackView {
    /// The array it exports.
    spec: TensorSpec,
    /// What keeps the memory valid.
    owner: Owner,
    /// For subscriber frames: how to name its exports.
    track: Option<Track>,
    /// This object's own hold, when the user can keep it.
    _pin: Option<Arc<Pin>>,
}

impl DLPackView {
    /// A view whose exports nobody needs to name (a publisher's lease).
    pub fn new(spec: TensorSpec, owner: Owner) -> Self {
        Self {
            spec,
            owner,
            track: None,
            _pin: None,
        }
    }

    /// A view of a subscriber's frame; `visible` when the object itself is
    /// handed to the user (and so may hold the frame for long).
    pub fn tracked(spec: TensorSpec, owner: Owner, track: Track, visible: bool) -> Self {
        let pin = visible.then(|| {
            track
                .holds
                .pin(track.seq, Via::View, track.origin.clone(), owner.clone())
        });
        Self {
            spec,
            owner,
            track: Some(track),
            _pin: pin,
        }
    }

    /// What an array made of this view must keep alive: for a
    /// subscriber's frame a new hold, named as a numpy property's or a
    /// DLPack consumer's array (as `track` says).
    fn array_owner(&self) -> Owner {
        match &self.track {
            None => self.owner.clone(),
            Some(t) => t.holds.pin(
                t.seq,
                Via::Export { numpy: t.numpy },
                t.origin.clone(),
                self.owner.clone(),
            ),
        }
    }

    /// A capsule of this view.
    pub fn export<'py>(&self, py: Python<'py>, versioned: bool) -> PyResult<Bound<'py, PyAny>> {
        match &self.track {
            None => export(py, &self.spec, self.owner.clone(), None, versioned),
            Some(t) => {
                let pin = t.holds.pin(
                    t.seq,
                    Via::Export { numpy: t.numpy },
                    t.origin.clone(),
                    self.owner.clone(),
                );
                export(py, &self.spec, pin.clone(), Some(&pin), versioned)
            }
        }
    }

    /// The answer to a `__dlpack__` call: for a GPU frame, the consumer's
    /// stream is first ordered after the frame's publish, here and now on
    /// the calling thread (see [`Keep::use_on`]): what the stream names,
    /// the per-thread stream above all, is resolved at export.
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
    /// The DLPack protocol: a capsule of this view (versioned when
    /// `max_version >= (1, 0)`); for GPU memory `stream` is ordered after
    /// the frame's publish.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.answer(py, Request::new(stream, max_version, dl_device, copy))
    }

    /// `(device_type, device_id)`: `(1, 0)` host, `(2, gpu)` CUDA.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (self.spec.device.device_type, self.spec.device.device_id)
    }

    /// `(rows, …)` of the view.
    #[getter]
    fn shape(&self) -> Vec<i64> {
        self.spec.shape[..self.spec.ndim].to_vec()
    }
}

/// A zero-copy numpy array of `view`: made directly (see `numpy.rs`), or
/// where numpy's C API cannot be used, `numpy.from_dlpack(view)`.
pub fn to_numpy<'py>(py: Python<'py>, view: DLPackView) -> PyResult<Bound<'py, PyAny>> {
    if view.spec.device.device_type != DEVICE_CPU {
        return Err(crate::errors::raise(
            cuframes::ErrorCode::InvalidArgument,
            "the frame is in GPU memory: numpy cannot view it; use \
             torch.from_dlpack(frame.plane(i)) or cupy.from_dlpack(...)",
        ));
    }
    if let Some(array) = crate::numpy::array(py, &view.spec, || view.array_owner()) {
        return array;
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
