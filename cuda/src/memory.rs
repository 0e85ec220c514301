//! The one device allocation that holds every slot: created and exported
//! by the publisher, imported by each subscriber.

use crate::driver::{call, Device, DevicePtr};
use cudarc::driver::sys;
use cuframes::{Error, ErrorCode, Result};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Legacy allocations this process exported, by handle: the driver refuses
/// to open a handle in the process that made it, so a subscriber in the
/// publisher's own process uses the pointer directly.
static EXPORTED: Mutex<Vec<([u8; 64], DevicePtr)>> = Mutex::new(Vec::new());

/// Handles this process has open, shared by every subscriber of the stream:
/// the driver maps a handle once per process (a second open fails with
/// `CUDA_ERROR_ALREADY_MAPPED`).
static IMPORTED: Mutex<Option<HashMap<[u8; 64], Weak<IpcImport>>>> = Mutex::new(None);

/// A legacy allocation (`cuMemAlloc`), exportable with `cuIpcGetMemHandle`.
pub(crate) struct Legacy {
    pub ptr: DevicePtr,
    pub bytes: u64,
    dev: Arc<Device>,
}

impl Legacy {
    pub fn alloc(dev: &Arc<Device>, bytes: u64) -> Result<(Legacy, [u8; 64])> {
        let _g = dev.enter()?;
        let mut ptr: DevicePtr = 0;
        // SAFETY: writes one device pointer; freed in Drop.
        call("cuMemAlloc", || unsafe {
            sys::cuMemAlloc_v2(&mut ptr, bytes as usize)
        })?;
        let mem = Legacy {
            ptr,
            bytes,
            dev: dev.clone(),
        };
        let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
        // SAFETY: `ptr` is the base of a live cuMemAlloc allocation.
        call("cuIpcGetMemHandle", || unsafe {
            sys::cuIpcGetMemHandle(&mut h, mem.ptr)
        })?;
        let handle = h.reserved.map(|b| b as u8);
        EXPORTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((handle, mem.ptr));
        Ok((mem, handle))
    }
}

impl Drop for Legacy {
    fn drop(&mut self) {
        EXPORTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, p)| *p != self.ptr);
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: our allocation, freed once; the publisher synchronised
            // its stream before dropping it.
            let _ = call("cuMemFree", || unsafe { sys::cuMemFree_v2(self.ptr) });
        }
    }
}

/// Memory opened from a `cuIpcGetMemHandle` handle: once per process,
/// shared by every subscriber of the stream here.
pub(crate) struct IpcImport {
    pub ptr: DevicePtr,
    /// False when the handle is this process's own export (nothing to close).
    opened: bool,
    dev: Arc<Device>,
}

impl IpcImport {
    pub fn open(dev: &Arc<Device>, handle: [u8; 64]) -> Result<Arc<IpcImport>> {
        let mut cache = IMPORTED.lock().unwrap_or_else(PoisonError::into_inner);
        let cache = cache.get_or_insert_with(HashMap::new);
        cache.retain(|_, w| w.strong_count() > 0);
        if let Some(m) = cache.get(&handle).and_then(Weak::upgrade) {
            return Ok(m);
        }
        let own = EXPORTED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(h, _)| *h == handle)
            .map(|(_, p)| *p);
        let m = Arc::new(match own {
            Some(ptr) => IpcImport {
                ptr,
                opened: false,
                dev: dev.clone(),
            },
            None => Self::open_handle(dev, handle)?,
        });
        cache.insert(handle, Arc::downgrade(&m));
        Ok(m)
    }

    fn open_handle(dev: &Arc<Device>, handle: [u8; 64]) -> Result<IpcImport> {
        let _g = dev.enter()?;
        let mut ptr: DevicePtr = 0;
        let h = sys::CUipcMemHandle {
            reserved: handle.map(|b| b as std::ffi::c_char),
        };
        let flags = sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
        // SAFETY: the handle is passed by value and validated by the driver;
        // writes one device pointer, closed in Drop.
        call("cuIpcOpenMemHandle", || unsafe {
            sys::cuIpcOpenMemHandle_v2(&mut ptr, h, flags)
        })?;
        Ok(IpcImport {
            ptr,
            opened: true,
            dev: dev.clone(),
        })
    }
}

impl Drop for IpcImport {
    fn drop(&mut self) {
        if !self.opened {
            return;
        }
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: opened by `open`, closed once.
            let _ = call("cuIpcCloseMemHandle", || unsafe {
                sys::cuIpcCloseMemHandle(self.ptr)
            });
        }
    }
}

fn vmm_prop(ordinal: u32) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes:
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            id: ordinal as i32,
        },
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

/// Allocation granularity for VMM memory on a device (bytes).
pub(crate) fn vmm_granularity(dev: &Device) -> Result<u64> {
    let prop = vmm_prop(dev.ordinal);
    let mut g = 0usize;
    // SAFETY: reads `prop`, writes one usize.
    call("cuMemGetAllocationGranularity", || unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut g,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    })?;
    if g == 0 || !g.is_power_of_two() {
        return Err(Error::new(
            ErrorCode::Cuda,
            format!("implausible VMM granularity {g}"),
        ));
    }
    Ok(g as u64)
}

/// A VMM allocation mapped into this process: created here (publisher) or
/// imported from a file descriptor (subscriber). Drop undoes whatever
/// steps were done, so a failure half-way leaks nothing.
pub(crate) struct Vmm {
    pub ptr: DevicePtr,
    pub bytes: u64,
    handle: Option<sys::CUmemGenericAllocationHandle>,
    reserved: bool,
    mapped: bool,
    dev: Arc<Device>,
}

impl Vmm {
    fn empty(dev: &Arc<Device>, bytes: u64) -> Vmm {
        Vmm {
            ptr: 0,
            bytes,
            handle: None,
            reserved: false,
            mapped: false,
            dev: dev.clone(),
        }
    }

    /// Creates `bytes` (a multiple of the granularity) of device memory
    /// exportable as a POSIX file descriptor, maps it read-write, and
    /// exports it.
    pub fn create(dev: &Arc<Device>, bytes: u64) -> Result<(Vmm, OwnedFd)> {
        let _g = dev.enter()?;
        let prop = vmm_prop(dev.ordinal);
        let mut v = Vmm::empty(dev, bytes);
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: reads `prop`, writes one handle; released in Drop.
        call("cuMemCreate", || unsafe {
            sys::cuMemCreate(&mut h, bytes as usize, &prop, 0)
        })?;
        v.handle = Some(h);
        v.map(sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE)?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: for POSIX_FILE_DESCRIPTOR the driver writes an int (a new
        // descriptor we then own) through the pointer.
        call("cuMemExportToShareableHandle", || unsafe {
            sys::cuMemExportToShareableHandle(
                (&mut fd as *mut std::ffi::c_int).cast(),
                h,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        })?;
        if fd < 0 {
            return Err(Error::new(
                ErrorCode::Cuda,
                "cuMemExportToShareableHandle returned no descriptor",
            ));
        }
        // SAFETY: the driver created this descriptor for us; nobody else owns it.
        Ok((v, unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Imports an allocation of `bytes` from a descriptor sent by the
    /// publisher and maps it read-only, so a subscriber cannot change what
    /// others read; where the driver refuses read-only access to a device
    /// mapping it is mapped read-write (the slots are then protected only
    /// by the protocol).
    pub fn import(dev: &Arc<Device>, fd: &OwnedFd, bytes: u64) -> Result<Vmm> {
        let _g = dev.enter()?;
        let mut v = Vmm::empty(dev, bytes);
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        let raw = fd.as_raw_fd();
        // SAFETY: for POSIX_FILE_DESCRIPTOR the descriptor is passed as the
        // pointer value itself; the driver duplicates what it needs and
        // writes one handle, released in Drop.
        call("cuMemImportFromShareableHandle", || unsafe {
            sys::cuMemImportFromShareableHandle(
                &mut h,
                raw as isize as *mut std::ffi::c_void,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        })?;
        v.handle = Some(h);
        match v.map(sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READ) {
            Ok(()) => {}
            // Mapped, but read-only access refused: only that step is
            // retried. Any earlier failure is the real error.
            Err(_) if v.mapped => {
                v.map(sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE)?
            }
            Err(e) => return Err(e),
        }
        Ok(v)
    }

    fn map(&mut self, flags: sys::CUmemAccess_flags) -> Result<()> {
        let h = self.handle.expect("handle before map");
        let size = self.bytes as usize;
        let granularity = vmm_granularity(&self.dev)? as usize;
        if size % granularity != 0 {
            return Err(Error::new(
                ErrorCode::Corrupt,
                format!(
                    "allocation of {size} bytes is not a multiple of the granularity {granularity}"
                ),
            ));
        }
        if !self.reserved {
            let mut ptr: DevicePtr = 0;
            // SAFETY: reserves address space only; freed in Drop.
            call("cuMemAddressReserve", || unsafe {
                sys::cuMemAddressReserve(&mut ptr, size, granularity, 0, 0)
            })?;
            self.ptr = ptr;
            self.reserved = true;
        }
        let ptr = self.ptr;
        if !self.mapped {
            // SAFETY: maps the whole allocation at the start of our reservation.
            call("cuMemMap", || unsafe { sys::cuMemMap(ptr, size, 0, h, 0) })?;
            self.mapped = true;
        }
        let access = sys::CUmemAccessDesc {
            location: sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: self.dev.ordinal as i32,
            },
            flags,
        };
        // SAFETY: the range is mapped; reads one descriptor.
        call("cuMemSetAccess", || unsafe {
            sys::cuMemSetAccess(ptr, size, &access, 1)
        })
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let Ok(_g) = self.dev.enter() else { return };
        let size = self.bytes as usize;
        if self.mapped {
            // SAFETY: unmaps what `map` mapped, once.
            let _ = call("cuMemUnmap", || unsafe { sys::cuMemUnmap(self.ptr, size) });
        }
        if self.reserved {
            // SAFETY: frees what `map` reserved, once, after the unmap.
            let _ = call("cuMemAddressFree", || unsafe {
                sys::cuMemAddressFree(self.ptr, size)
            });
        }
        if let Some(h) = self.handle {
            // SAFETY: releases our handle; the memory lives on while other
            // processes still hold theirs.
            let _ = call("cuMemRelease", || unsafe { sys::cuMemRelease(h) });
        }
    }
}

/// Host memory registered with the driver and mapped for the device: the
/// sync region of a stream's backend area. Unregistered on drop.
pub(crate) struct HostRegistration {
    host: *mut u8,
    /// The device address of the same bytes.
    pub device: DevicePtr,
    dev: Arc<Device>,
}

// SAFETY: holds addresses only; the driver handles are usable from any
// thread with the context current (Drop enters it).
unsafe impl Send for HostRegistration {}
// SAFETY: as above.
unsafe impl Sync for HostRegistration {}

impl HostRegistration {
    /// Registers `len` bytes at `host` (page-aligned, a multiple of the
    /// page size) for device access and returns their device address.
    ///
    /// # Safety
    /// The range must stay mapped until the registration is dropped.
    // SAFETY: callers meet the `# Safety` contract above; the body assumes
    // nothing beyond it.
    pub unsafe fn new(dev: &Arc<Device>, host: *mut u8, len: usize) -> Result<HostRegistration> {
        let _g = dev.enter()?;
        let flags = sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE;
        // SAFETY: the caller keeps the range mapped while registered.
        call("cuMemHostRegister", || unsafe {
            sys::cuMemHostRegister_v2(host.cast(), len, flags)
        })?;
        let mut reg = HostRegistration {
            host,
            device: 0,
            dev: dev.clone(),
        };
        let mut device: DevicePtr = 0;
        // SAFETY: `host` was registered with DEVICEMAP just above; writes
        // one device pointer.
        call("cuMemHostGetDevicePointer", || unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut device, host.cast(), 0)
        })?;
        reg.device = device;
        Ok(reg)
    }
}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: registered by `new`, unregistered once.
            let _ = call("cuMemHostUnregister", || unsafe {
                sys::cuMemHostUnregister(self.host.cast())
            });
        }
    }
}

/// Page-locked host memory (`cuMemAllocHost`): copies from it run
/// asynchronously, so uploads never wait for the stream.
pub(crate) struct Pinned {
    ptr: *mut u8,
    len: usize,
    dev: Arc<Device>,
}

// SAFETY: plain memory owned by this value; the driver handle is used
// with the context entered.
unsafe impl Send for Pinned {}

impl Pinned {
    pub fn new(dev: &Arc<Device>, len: usize) -> Result<Pinned> {
        let _g = dev.enter()?;
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer to `len` bytes the driver allocates
        // for us; freed in Drop.
        call("cuMemAllocHost", || unsafe {
            sys::cuMemAllocHost_v2(&mut p, len.max(1))
        })?;
        Ok(Pinned {
            ptr: p.cast(),
            len,
            dev: dev.clone(),
        })
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes allocated for us, exclusively borrowed here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as above, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Ok(_g) = self.dev.enter() {
            // SAFETY: allocated by `new`, freed once; the owner made sure
            // no copy still reads it.
            let _ = call("cuMemFreeHost", || unsafe {
                sys::cuMemFreeHost(self.ptr.cast())
            });
        }
    }
}
