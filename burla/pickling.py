"""cloudpickle as burla uses it: pickled code keeps the name of the file it came from.

cloudpickle 3.1.3 writes `"<dynamic-code>"` as the file name of every code object it pickles
by value (for deterministic pickles). A remote traceback would then read
`File "<dynamic-code>", line 4, in f`: no file, and no source line even where the file exists
on the caller's machine. This pickler keeps the real file name, whatever cloudpickle version is
installed; the pickle stays deterministic for a function defined in one place.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

# The name cloudpickle 3.1.3+ gives the file of code it pickles by value.
_PLACEHOLDER_FILENAME = "<dynamic-code>"
_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table.get(types.CodeType)


def _code_reduce(code: types.CodeType) -> Any:
    rebuild, args = _cloudpickle_code_reduce(code)
    if code.co_filename == _PLACEHOLDER_FILENAME:
        return rebuild, args
    return rebuild, tuple(code.co_filename if arg == _PLACEHOLDER_FILENAME else arg
                          for arg in args)


class Pickler(cloudpickle.Pickler):
    """A cloudpickle Pickler whose code objects keep their `co_filename`."""

    if _cloudpickle_code_reduce is not None:
        dispatch_table = ChainMap({types.CodeType: _code_reduce},
                                  cloudpickle.Pickler.dispatch_table)


def dumps(value: Any) -> bytes:
    """`cloudpickle.dumps` at the highest protocol, keeping code file names."""
    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()
