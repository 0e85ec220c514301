"""A minimal DLPack consumer that does what ``torch.from_dlpack(capsule)``
does, for machines without torch: it takes ownership of a ``dltensor``
capsule (renaming it ``used_dltensor``, as the protocol says), reads the
tensor in place, and calls the producer's deleter when it is garbage
collected."""

from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

from dlpack_structs import DLTensor as _DLTensor


class _DLManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [
    ("dl_tensor", _DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", _Deleter),
]

# The new name must outlive every capsule renamed to it: a module constant.
_USED = b"used_dltensor"

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


class Tensor:
    """A read-only 2-D uint8 tensor consumed from a legacy DLPack capsule."""

    def __init__(self, capsule: Any) -> None:
        address = _api.PyCapsule_GetPointer(capsule, b"dltensor")
        if _api.PyCapsule_SetName(capsule, _USED) != 0:
            raise RuntimeError("cannot rename the capsule")
        managed = ctypes.cast(address, ctypes.POINTER(_DLManagedTensor))
        self._managed: Optional["ctypes._Pointer[_DLManagedTensor]"] = managed
        t = managed.contents.dl_tensor
        if t.dtype.bits != 8 or t.ndim != 2:
            raise ValueError("this consumer reads 2-D uint8 tensors only")
        self.shape: Tuple[int, int] = (t.shape[0], t.shape[1])
        self.strides: Tuple[int, int] = (t.strides[0], t.strides[1])
        self.data_ptr: int = int(t.data or 0) + int(t.byte_offset)
        self.device: Tuple[int, int] = (t.device.device_type, t.device.device_id)

    def row(self, r: int, n: int) -> bytes:
        """The first ``n`` bytes of row ``r``."""
        return ctypes.string_at(self.data_ptr + r * self.strides[0], n)

    def __del__(self) -> None:
        managed = getattr(self, "_managed", None)
        if managed is not None:
            self._managed = None
            managed.contents.deleter(managed)
