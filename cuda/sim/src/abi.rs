//! Mirrors of the driver's structs with plain integers where cudarc has
//! enums (a caller may pass any value; reading a bad discriminant into a
//! Rust enum would be undefined), checked against cudarc's layouts.

use crate::sys;
use std::ffi::c_void;
use std::mem::{align_of, offset_of, size_of};

macro_rules! same_layout {
    ($a:ty, $b:ty $(, $fa:ident = $fb:ident)*) => {
        const _: () = {
            assert!(size_of::<$a>() == size_of::<$b>());
            assert!(align_of::<$a>() == align_of::<$b>());
            $(assert!(offset_of!($a, $fa) == offset_of!($b, $fb));)*
        };
    };
}

/// `CUDA_MEMCPY2D`.
#[repr(C)]
pub(crate) struct Memcpy2D {
    pub src_x: usize,
    pub src_y: usize,
    pub src_type: u32,
    pub src_host: *const c_void,
    pub src_device: u64,
    pub src_array: *mut c_void,
    pub src_pitch: usize,
    pub dst_x: usize,
    pub dst_y: usize,
    pub dst_type: u32,
    pub dst_host: *mut c_void,
    pub dst_device: u64,
    pub dst_array: *mut c_void,
    pub dst_pitch: usize,
    pub width: usize,
    pub height: usize,
}

same_layout!(
    Memcpy2D,
    sys::CUDA_MEMCPY2D,
    src_x = srcXInBytes,
    src_y = srcY,
    src_type = srcMemoryType,
    src_host = srcHost,
    src_device = srcDevice,
    src_array = srcArray,
    src_pitch = srcPitch,
    dst_x = dstXInBytes,
    dst_y = dstY,
    dst_type = dstMemoryType,
    dst_host = dstHost,
    dst_device = dstDevice,
    dst_array = dstArray,
    dst_pitch = dstPitch,
    width = WidthInBytes,
    height = Height
);

/// `CUmemLocation`.
#[repr(C)]
pub(crate) struct Location {
    pub type_: u32,
    pub id: i32,
}

same_layout!(Location, sys::CUmemLocation, type_ = type_, id = id);

/// `CUmemAllocationProp`.
#[repr(C)]
pub(crate) struct AllocProp {
    pub type_: u32,
    pub handle_types: u32,
    pub location: Location,
    pub win32: *mut c_void,
    pub compression: u8,
    pub rdma: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

same_layout!(
    AllocProp,
    sys::CUmemAllocationProp,
    type_ = type_,
    handle_types = requestedHandleTypes,
    location = location,
    win32 = win32HandleMetaData,
    compression = allocFlags
);

/// `CUmemAccessDesc`.
#[repr(C)]
pub(crate) struct AccessDesc {
    pub location: Location,
    pub flags: u32,
}

same_layout!(
    AccessDesc,
    sys::CUmemAccessDesc,
    location = location,
    flags = flags
);

same_layout!(sys::CUipcMemHandle, [u8; 64]);
same_layout!(sys::CUipcEventHandle, [u8; 64]);
same_layout!(sys::CUuuid, [u8; 16]);

pub(crate) const MEMORYTYPE_HOST: u32 = sys::CUmemorytype::CU_MEMORYTYPE_HOST as u32;
pub(crate) const MEMORYTYPE_DEVICE: u32 = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;
pub(crate) const MEMORYTYPE_ARRAY: u32 = sys::CUmemorytype::CU_MEMORYTYPE_ARRAY as u32;
pub(crate) const MEMORYTYPE_UNIFIED: u32 = sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED as u32;
pub(crate) const LOCATION_DEVICE: u32 = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE as u32;
pub(crate) const ALLOCATION_PINNED: u32 =
    sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED as u32;
pub(crate) const HANDLE_POSIX_FD: u32 =
    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR.0;
pub(crate) const POINTER_MEMORY_TYPE: u32 =
    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE as u32;
pub(crate) const POINTER_DEVICE_ORDINAL: u32 =
    sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL as u32;
pub(crate) const WAIT_FLUSH: u32 = sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_FLUSH as u32;
