//! numpy arrays over frame, packet and lease memory, made directly through
//! numpy's C API (the `_ARRAY_API` table every numpy extension uses)
//! rather than by a `numpy.from_dlpack` round trip: one array object and
//! its base, no capsule, no keyword calls. The array's base is a
//! [`Memory`] object keeping the memory's owner (a frame's hold, a
//! publisher's mapping) alive until the array and every view derived from
//! it are gone, exactly as the DLPack capsule's owner did.
//!
//! The table is found once per process. Where it cannot be used (an
//! unknown numpy ABI), `dlpack::to_numpy` keeps the DLPack route.

use crate::dlpack::{Owner, TensorSpec, DEVICE_CPU};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::ffi::{c_int, c_uint, c_void};

/// `NPY_UBYTE`.
const NPY_UBYTE: c_int = 2;
/// `NPY_USHORT`.
const NPY_USHORT: c_int = 4;
/// `NPY_ARRAY_WRITEABLE`.
const NPY_ARRAY_WRITEABLE: c_int = 0x0400;

/// Slots of the `_ARRAY_API` table, the same in numpy 1.x and 2.x (the
/// table's order is part of numpy's ABI: `__multiarray_api.h`).
mod slot {
    /// `PyArray_GetNDArrayCVersion`.
    pub const ABI_VERSION: usize = 0;
    /// `PyArray_Type`.
    pub const ARRAY_TYPE: usize = 2;
    /// `PyArray_DescrFromType`.
    pub const DESCR_FROM_TYPE: usize = 45;
    /// `PyArray_NewFromDescr`.
    pub const NEW_FROM_DESCR: usize = 94;
    /// `PyArray_GetNDArrayCFeatureVersion`.
    pub const FEATURE_VERSION: usize = 211;
    /// `PyArray_SetBaseObject`.
    pub const SET_BASE_OBJECT: usize = 282;
}

/// `PyArray_GetNDArrayCVersion` of numpy 1.x (every 1.x since 1.0).
const ABI_1: c_uint = 0x0100_0009;
/// The C-API feature version that added `PyArray_SetBaseObject` (1.7).
const FEATURE_1_7: c_uint = 7;

/// `PyArray_DescrFromType`.
type DescrFromType = unsafe extern "C" fn(c_int) -> *mut ffi::PyObject;
/// `PyArray_NewFromDescr`.
type NewFromDescr = unsafe extern "C" fn(
    *mut ffi::PyTypeObject,
    *mut ffi::PyObject,
    c_int,
    *const ffi::Py_ssize_t,
    *const ffi::Py_ssize_t,
    *mut c_void,
    c_int,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;
/// `PyArray_SetBaseObject`.
type SetBaseObject = unsafe extern "C" fn(*mut ffi::PyObject, *mut ffi::PyObject) -> c_int;
/// `PyArray_GetNDArrayCVersion` and `PyArray_GetNDArrayCFeatureVersion`.
type Version = unsafe extern "C" fn() -> c_uint;

/// The three calls an array over foreign memory needs.
struct Api {
    /// `&PyArray_Type`, as an address (numpy's static type object, which
    /// lives as long as the process: extension modules are never unloaded).
    array_type: usize,
    /// `PyArray_DescrFromType`.
    descr_from_type: DescrFromType,
    /// `PyArray_NewFromDescr`.
    new_from_descr: NewFromDescr,
    /// `PyArray_SetBaseObject`.
    set_base_object: SetBaseObject,
}

/// numpy's C API once found: `None` when numpy's ABI is not one this
/// code knows. An import error is not kept: the next call tries again.
static API: PyOnceLock<Option<Api>> = PyOnceLock::new();

/// Reads numpy's API table (imports numpy).
fn load(py: Python<'_>) -> PyResult<Option<Api>> {
    py.import("numpy")?;
    let module = py
        .import("numpy._core._multiarray_umath")
        .or_else(|_| py.import("numpy.core._multiarray_umath"))?;
    let capsule = module.getattr("_ARRAY_API")?;
    // SAFETY: `capsule` is a live object; `PyCapsule_CheckExact` only reads
    // its type, and `PyCapsule_GetPointer` with a null name is how numpy's
    // own `import_array` reads this unnamed capsule (null on a mismatch,
    // with an exception we clear).
    let table = unsafe {
        if ffi::PyCapsule_CheckExact(capsule.as_ptr()) == 0 {
            return Ok(None);
        }
        let p = ffi::PyCapsule_GetPointer(capsule.as_ptr(), std::ptr::null());
        if p.is_null() {
            ffi::PyErr_Clear();
            return Ok(None);
        }
        p.cast::<*const c_void>().cast_const()
    };
    // SAFETY: `table` is numpy's `PyArray_API`, an array of at least 283
    // entries in every numpy whose ABI version is checked here first (slot
    // 0 exists in all of them); the slots read hold the functions and the
    // type object their names say, with the signatures declared above
    // (numpy's `__multiarray_api.h`). The capsule's module stays imported
    // (in `sys.modules`) for the life of the process.
    unsafe {
        let abi: Version = std::mem::transmute(*table.add(slot::ABI_VERSION));
        let abi = abi();
        if abi != ABI_1 && abi >> 24 != 2 {
            return Ok(None);
        }
        let feature: Version = std::mem::transmute(*table.add(slot::FEATURE_VERSION));
        if feature() < FEATURE_1_7 {
            return Ok(None);
        }
        Ok(Some(Api {
            array_type: *table.add(slot::ARRAY_TYPE) as usize,
            descr_from_type: std::mem::transmute::<*const c_void, DescrFromType>(
                *table.add(slot::DESCR_FROM_TYPE),
            ),
            new_from_descr: std::mem::transmute::<*const c_void, NewFromDescr>(
                *table.add(slot::NEW_FROM_DESCR),
            ),
            set_base_object: std::mem::transmute::<*const c_void, SetBaseObject>(
                *table.add(slot::SET_BASE_OBJECT),
            ),
        }))
    }
}

/// The base of the arrays made here: keeps the memory's owner alive while
/// the array (or any view numpy derives from it: their base is the array)
/// lives. It has no buffer, so numpy never lets a read-only array made
/// here be made writeable.
#[pyclass(name = "ArrayMemory", module = "cuframes._native", frozen)]
pub struct Memory {
    /// What keeps the memory valid (for a subscriber's frame: its hold).
    _owner: Owner,
}

/// A numpy array of `spec` whose base keeps `owner` alive; `None` when
/// numpy's C API cannot be used here (the caller takes the DLPack route).
pub fn array<'py>(
    py: Python<'py>,
    spec: &TensorSpec,
    owner: impl FnOnce() -> Owner,
) -> Option<PyResult<Bound<'py, PyAny>>> {
    let api = match API.get_or_try_init(py, || load(py)) {
        Ok(Some(api)) => api,
        _ => return None,
    };
    let (typenum, elem) = match spec.bits {
        8 => (NPY_UBYTE, 1),
        16 => (NPY_USHORT, 2),
        _ => return None,
    };
    if spec.device.device_type != DEVICE_CPU || !(1..=3).contains(&spec.ndim) {
        return None;
    }
    let dims = spec.shape.map(|d| d as ffi::Py_ssize_t);
    let strides = spec.strides.map(|s| s as ffi::Py_ssize_t * elem);
    let flags = if spec.read_only {
        0
    } else {
        NPY_ARRAY_WRITEABLE
    };
    let base = match Bound::new(py, Memory { _owner: owner() }) {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    // SAFETY: the GIL is held. `descr_from_type` returns a new reference
    // to a builtin dtype, which `new_from_descr` steals (even on failure).
    // `dims` and `strides` hold `spec.ndim` (1 to 3) entries, the strides
    // in bytes; `spec.data` is the first element of memory that `owner`
    // keeps valid for that shape and those strides (the layout was
    // validated), and that memory outlives the array because its base is
    // `base`, which `set_base_object` steals (even on failure; then the
    // array is dropped). Without `NPY_ARRAY_WRITEABLE` the array is
    // read-only, and with a base that has no buffer numpy refuses to make
    // it writeable. Nobody else sees the array before its base is set.
    unsafe {
        let descr = (api.descr_from_type)(typenum);
        if descr.is_null() {
            return Some(Err(PyErr::fetch(py)));
        }
        let array = (api.new_from_descr)(
            api.array_type as *mut ffi::PyTypeObject,
            descr,
            spec.ndim as c_int,
            dims.as_ptr(),
            strides.as_ptr(),
            spec.data as *mut c_void,
            flags,
            std::ptr::null_mut(),
        );
        if array.is_null() {
            return Some(Err(PyErr::fetch(py)));
        }
        let array = Bound::from_owned_ptr(py, array);
        if (api.set_base_object)(array.as_ptr(), base.into_ptr()) != 0 {
            return Some(Err(PyErr::fetch(py)));
        }
        Some(Ok(array))
    }
}
