"""The tests run against the installed wheel: one abi3 extension for every
CPython >= 3.9, outside the source tree, with its type information."""

from __future__ import annotations

import enum
import inspect
from pathlib import Path

import cuframes
import cuframes._native

SOURCE = Path(__file__).resolve().parents[1] / "cuframes"


def test_the_extension_is_abi3() -> None:
    # A version-specific build would be named _native.cpython-3XX-....so.
    assert Path(cuframes._native.__file__ or "").name == "_native.abi3.so"


def test_the_installed_package_is_tested_not_the_sources() -> None:
    installed = Path(cuframes.__file__).resolve().parent
    assert installed != SOURCE.resolve()
    assert "site-packages" in installed.parts
    for typed in ["py.typed", "_native.pyi", "_enums.py", "_callback.py"]:
        assert (installed / typed).is_file(), typed


PROTOCOL = {"__dlpack__", "__dlpack_device__", "__enter__", "__exit__", "__iter__", "__next__", "__aiter__"}


def test_every_public_item_is_documented() -> None:
    undocumented = []
    for name in cuframes.__all__:
        obj = getattr(cuframes, name)
        if not inspect.getdoc(obj):
            undocumented.append(name)
        if not inspect.isclass(obj) or issubclass(obj, (enum.Enum, BaseException)):
            continue
        for member in dir(obj):
            if member.startswith("_") and member not in PROTOCOL:
                continue
            attr = inspect.getattr_static(obj, member)
            doc = attr.__doc__ if isinstance(attr, property) else getattr(attr, "__doc__", None)
            inherited = getattr(object, member, None)
            if not doc or (inherited is not None and doc == inherited.__doc__):
                undocumented.append(f"{name}.{member}")
    assert undocumented == []
