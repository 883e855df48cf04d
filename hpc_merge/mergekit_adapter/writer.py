"""Write each merged tensor to disk as soon as it is computed, instead of holding a whole shard.

Why: mergekit's ``TensorWriter`` keeps every tensor of the current output shard in memory until the
shard is full (``out_shard_size``, 1B by default here), then writes it with ``save_file``. For a
single-shard 1 GB output that is the whole merged model in RAM at the end of the merge — once
the largest tensors are merged in row chunks (:mod:`~hpc_merge.mergekit_adapter.chunked`) it is the
largest term of the peak RSS, and it made the peak depend on the output's shard size.

What: :class:`StreamingTensorWriter` writes each tensor's bytes into the shard file as it arrives
(the tensor is then free), behind room left for the safetensors header. The room is an upper bound
computed from the names of every tensor the merge plans to write (:func:`stream_writes` reads
them off mergekit's planner): when the shard is complete its header is written in front, padded
with spaces to the reserved size, which the format allows. Should a header not fit (more than 8
dimensions, or no plan seen), the shard is rewritten once behind its exact header (a kernel-side
``copy_file_range`` where the filesystem has it). Shard names, the index file and the final renames
are mergekit's own (this is a subclass); the files load tensor-for-tensor equal to ``save_file``'s
(tested). Installed by ``run_mergekit`` for safetensors output.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from typing import Any

import torch
from mergekit.io.tensor_writer import TensorWriter

_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


_ENTRY_BOUND = 300  # bytes of header per tensor besides its name: dtype, ≤ 8 dims, two offsets, JSON
_HEADER_BOUND: contextvars.ContextVar[int] = contextvars.ContextVar("hpc_merge_header_bound", default=0)


def header_bound(names: list[str]) -> int:
    """Bytes that hold the header of any shard made of some of ``names`` (a multiple of 8)."""
    size = 64 + sum(len(json.dumps(n)) + _ENTRY_BOUND for n in names)
    return size + (-size % 8)


class StreamingTensorWriter(TensorWriter):
    """mergekit's writer with each tensor written through to its shard file on ``save_tensor``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserve = _HEADER_BOUND.get()  # header room in front of the data
        self._entries: dict[str, dict[str, Any]] = {}  # current shard: name -> header entry
        self._file: Any = None  # the current shard, data written from 8 + reserve
        self._data_size = 0

    def _shard_path(self, index: int) -> str:
        prefix, extension = self._get_name_components()
        return os.path.join(self.out_path, f"{prefix}-{index + 1}.{extension}")

    def save_tensor(self, name: str, tensor: torch.Tensor, clone: bool = False) -> None:
        """Write the tensor's bytes into the current shard (starting a new shard when full)."""
        if tensor.dtype not in _ST_DTYPES:
            raise TypeError(f"cannot write {name}: dtype {tensor.dtype} has no safetensors code")
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            if self._entries and self.max_shard_size > 0 and self.current_shard_size + nbytes > self.max_shard_size:
                self._flush_current_shard()
            if self._file is None:
                self._file = open(self._shard_path(self.shards_written), "wb")  # noqa: SIM115 (closed at flush)
                self._file.seek(8 + self.reserve)
                self._data_size = 0
            if nbytes:
                self._file.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            self._entries[name] = {"dtype": _ST_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                                   "data_offsets": [self._data_size, self._data_size + nbytes]}
            self._data_size += nbytes
            self.current_shard_size += nbytes

    def _flush_current_shard(self) -> None:
        """The header in front of the shard's data; mergekit's bookkeeping as before."""
        if not self._entries:
            return
        index = self.shards_written
        path = self._shard_path(index)
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._entries}, separators=(",", ":")).encode()
        if len(header) <= self.reserve:
            self._file.seek(0)
            self._file.write(self.reserve.to_bytes(8, "little") + header + b" " * (self.reserve - len(header)))
            self._file.close()
        else:  # no room: write the exact header, then move the data behind it
            self._file.close()
            header += b" " * (-len(header) % 8)
            with open(path + ".tmp", "wb") as out, open(path, "rb") as data:
                out.write(len(header).to_bytes(8, "little") + header)
                out.flush()
                _copy(data, 8 + self.reserve, out, self._data_size, path)
            os.replace(path + ".tmp", path)
        shard_name = os.path.basename(path)
        for key in self._entries:
            self.weight_map[key] = shard_name
        self.total_size += self.current_shard_size
        self.shards_written += 1
        self._entries, self._file, self._data_size, self.current_shard_size = {}, None, 0, 0


def _copy(src: Any, offset: int, dst: Any, size: int, name: str) -> None:
    """``size`` bytes of ``src`` from ``offset`` to the end of ``dst``: in the kernel where the filesystem can."""
    import errno
    import shutil

    done = 0
    try:
        while done < size:
            got = os.copy_file_range(src.fileno(), dst.fileno(), size - done, offset + done)
            if got <= 0:
                raise OSError(f"short copy writing {name} ({done} of {size} bytes)")
            done += got
    except OSError as exc:  # e.g. network filesystems without copy_file_range
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or done:
            raise
        src.seek(offset)
        shutil.copyfileobj(src, dst, 16 << 20)


@contextlib.contextmanager
def stream_writes() -> Iterator[None]:
    """Inside the block, mergekit's merge writes safetensors shards with :class:`StreamingTensorWriter`.

    The planner's output names set the header room (:func:`header_bound`) of the writers made after it.
    """
    import mergekit.io.tasks
    from mergekit.plan import MergePlanner

    real_writer, real_plan = mergekit.io.tasks.TensorWriter, MergePlanner._plan

    def make(*args: Any, **kwargs: Any) -> TensorWriter:
        if kwargs.get("safe_serialization", True):
            return StreamingTensorWriter(*args, **kwargs)
        return real_writer(*args, **kwargs)

    def plan(planner: MergePlanner) -> None:
        real_plan(planner)
        _HEADER_BOUND.set(header_bound([weight.name for weight, _task in planner._tensors]))

    mergekit.io.tasks.TensorWriter = make
    MergePlanner._plan = plan
    token = _HEADER_BOUND.set(0)
    try:
        yield
    finally:
        mergekit.io.tasks.TensorWriter, MergePlanner._plan = real_writer, real_plan
        _HEADER_BOUND.reset(token)
