"""Read safetensors inputs with ``pread`` instead of keeping them memory-mapped, during a merge.

Why: mergekit 0.1.5 opens every input shard with ``safetensors.safe_open``, which maps the whole
file; the tensors it returns are views of that mapping. Every page a merge touches then stays in
the process's resident set until the shard is closed, and mergekit keeps a single-file input open
for the whole merge — so a merge of three 1 GB models peaks at ≥ 3 GB of RSS (measured: 2.9 GiB
of file-backed RSS at the end of a linear merge of three 0.5B models) whatever the merge does.
On a shared SLURM node that RSS is what the memory cgroup and ``--mem`` see.

What: :class:`PreadSafetensors` exposes the two methods mergekit uses (``keys``, ``get_tensor``)
and reads one tensor's bytes into freshly allocated memory with ``os.preadv``; the pages are then
freed as soon as mergekit drops the tensor. The file still goes through the page cache (free,
reclaimable memory that is not charged to the process's RSS). The bytes are the same, so merges
are bit-identical (tested). It is installed by ``patches.pread_inputs`` around every on-disk merge
for CPU loads of ``.safetensors`` shards; GPU loads (``read_to_gpu``) and ``.bin`` inputs keep mergekit's loaders.
"""

from __future__ import annotations

import json
import os
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class PreadSafetensors:
    """A ``safe_open``-compatible reader that copies each tensor out of the file (no mapping kept)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.header: dict[str, Any] = header
        self.data_start = 8 + n
        self.fd = os.open(path, os.O_RDONLY)

    def keys(self) -> list[str]:
        """Tensor names in the file, like ``safe_open.keys``."""
        return list(self.header)

    def supported(self) -> bool:
        """Every dtype in the file has a torch equivalent here (else use safetensors' own reader)."""
        return all(v["dtype"] in _DTYPES for v in self.header.values())

    def get_tensor(self, key: str) -> torch.Tensor:
        """The tensor ``key`` in its stored dtype and shape, in memory this process owns."""
        info = self.header[key]
        start, end = info["data_offsets"]
        return self._read(key, start, end - start).reshape(info["shape"])

    def get_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the tensor ``key`` (its first dimension), reading only those bytes.

        Rows are contiguous in a safetensors file (row-major, no strides), so a row range is one
        byte range: the chunked merge reads a 600 MB embedding a few MB at a time this way.
        """
        info = self.header[key]
        shape = info["shape"]
        begin, end = info["data_offsets"]
        row_bytes = (end - begin) // shape[0] if shape and shape[0] else 0
        start, stop = max(0, start), min(stop, shape[0])
        return self._read(key, begin + start * row_bytes, (stop - start) * row_bytes).reshape(
            [stop - start, *shape[1:]])

    def get_flat(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Flat elements ``start:stop`` of the tensor ``key`` as a 1-D tensor (one byte range)."""
        info = self.header[key]
        begin, end = info["data_offsets"]
        size = (end - begin) // max(1, _numel(info["shape"]))
        start, stop = max(0, start), min(stop, _numel(info["shape"]))
        return self._read(key, begin + start * size, max(0, stop - start) * size)

    def shape_dtype(self, key: str) -> tuple[list[int], str] | None:
        """``(shape, torch dtype name)`` of ``key`` from the header (nothing read); None if absent or unreadable here."""
        info = self.header.get(key)
        if info is None or info["dtype"] not in _DTYPES:
            return None
        return list(info["shape"]), _DTYPES[info["dtype"]]

    def _read(self, key: str, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` at data ``offset`` into a fresh 1-D tensor of ``key``'s dtype."""
        import torch

        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], self.data_start + offset + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read of {key} ({done} of {len(view)} bytes)")
            done += got
        return buf.view(getattr(torch, _DTYPES[self.header[key]["dtype"]]))

    def close(self) -> None:
        """Close the file (also on garbage collection, when mergekit moves on to another shard)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
