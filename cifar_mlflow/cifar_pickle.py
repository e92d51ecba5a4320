"""CIFAR-10's pickle files: written as the official ones are, read whatever their key type.

The official `cifar-10-batches-py` files were written by Python 2's cPickle (protocol 2): their
keys and names are Python 2 `str`, which Python 3 loads as `str` with `encoding="latin1"` and
as `bytes` with `encoding="bytes"` (the data set page's Python 3 snippet). Files re-pickled
from that snippet's result carry `bytes` keys; files written by Python 3 code, `str` keys.
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Any

# The python layout: a folder of five training batches, a test batch and `batches.meta`.
CIFAR_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: text and bytes as Python 2 `str`, numpy's old names.

    Python 3's protocol 2 stores `bytes` as a call to `_codecs.encode` and text as unicode;
    Python 2 stored both as `str` (SHORT_BINSTRING/BINSTRING). The pure-Python pickler is
    used because only it lets a subclass replace how a type is saved.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, value: str | bytes) -> None:
        raw = value.encode("latin1") if isinstance(value, str) else value
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(value)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        # numpy 2 moved `numpy.core` to `numpy._core`; the files name the old module.
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
        self.memoize(obj)


def dump_python2(content: object, handle: IO[bytes]) -> None:
    """Pickle `content` in the official files' format (text written as Python 2 `str`)."""
    Python2Pickler(handle, protocol=2).dump(content)


def as_text(value: object) -> object:
    """`value`, decoded if it is `bytes` (a key or name loaded with `encoding="bytes"`)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def load(handle: IO[bytes]) -> dict[str, Any]:
    """A CIFAR-10 pickle as a dict with `str` keys, whether its keys were `str` or `bytes`."""
    content = pickle.load(handle, encoding="latin1")
    if not isinstance(content, dict):
        raise pickle.UnpicklingError(f"expected a dict, found {type(content).__name__}")
    return {as_text(key): value for key, value in content.items()}
