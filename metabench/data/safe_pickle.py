"""The one way metabench reads a pickle: numpy arrays in plain containers, nothing else.

Dataset archives (CIFAR-100's python archive, miniImageNet's caches) are pickles, and a pickle
can name any callable. A crafted archive whose checksum a user was told to set would run code on
``metabench fetch``, so every pickle goes through this allow-list unpickler: plain containers,
numbers, strings and bytes are built by the pickle machine itself; the only globals admitted are
the ones numpy needs to rebuild an array. Anything else (``os.system``, say) is refused, not
called. ``tests/test_faults.py`` greps the package for any other unpickling.
"""

from __future__ import annotations

import io
import pickle
from typing import IO

ARRAY_GLOBALS = frozenset(
    {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
    # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, "latin1"); a
    # codec only transforms data (torch's weights_only unpickler admits it for the same reason)
    | {("_codecs", "encode")}
)

# what a damaged or crafted pickle raises while being read, for one-line errors
ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside dicts, lists and tuples; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refused {module}.{name}: only numpy arrays in plain containers are read")
        return super().find_class(module, name)


def load(handle: IO[bytes], encoding: str = "ASCII") -> object:
    """Read one pickle from ``handle`` through the allow-list (``encoding="bytes"`` for Python 2 pickles)."""
    return ArrayUnpickler(handle, encoding=encoding).load()


def loads(data: bytes, encoding: str = "ASCII") -> object:
    return load(io.BytesIO(data), encoding=encoding)
