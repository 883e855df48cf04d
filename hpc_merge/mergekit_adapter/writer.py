"""Write each merged tensor to disk as soon as it is computed, instead of holding a whole shard.

Why: mergekit's ``TensorWriter`` keeps every tensor of the current output shard in memory until the
shard is full (``out_shard_size``, 1B by default here), then writes it with ``save_file``. For a
single-shard 1 GB output that is the whole merged model in RAM at the end of the merge — once
the largest tensors are merged in row chunks (:mod:`~hpc_merge.mergekit_adapter.chunked`) it is the
largest term of the peak RSS, and it made the peak depend on the output's shard size.

What: :class:`StreamingTensorWriter` writes each tensor's bytes into the shard file as it arrives
(the tensor is then free), behind room left for the safetensors header. A background thread does
the ``pwrite`` while the merge computes the next tensors (at most 128 MiB queued): writing 1 GB
into the page cache took ≈ 2 s of a 0.5B TIES merge when done in line. The room is an upper bound
computed from the names of every tensor the merge plans to write (:func:`reserve_headers` reads
them off mergekit's planner): when the shard is complete its header is written in front, padded
with spaces to the reserved size, which the format allows. Should a header not fit (more than 8
dimensions, or no plan seen), the shard is rewritten once behind its exact header (a kernel-side
``copy_file_range`` where the filesystem has it). Shard names, the index file and the final renames
are mergekit's own (this is a subclass); the files load tensor-for-tensor equal to ``save_file``'s
(tested). Installed by :func:`~hpc_merge.mergekit_adapter.patches.stream_writes` (part of every
on-disk merge) for safetensors output.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch
from mergekit.io.tensor_writer import TensorWriter

_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


#: the streaming writer of the merge running in this context (set by ``patches.stream_writes``'s
#: factory): chunked merges write their rows straight into its shard (:meth:`StreamingTensorWriter.open_slot`)
CURRENT: contextvars.ContextVar[list[StreamingTensorWriter]] = contextvars.ContextVar("hpc_merge_writer")

_ENTRY_BOUND = 300  # bytes of header per tensor besides its name: dtype, ≤ 8 dims, two offsets, JSON
_HEADER_BOUND: contextvars.ContextVar[int] = contextvars.ContextVar("hpc_merge_header_bound", default=0)


def header_bound(names: list[str]) -> int:
    """Bytes that hold the header of any shard made of some of ``names`` (a multiple of 8)."""
    size = 64 + sum(len(json.dumps(n)) + _ENTRY_BOUND for n in names)
    return size + (-size % 8)


class _WriteBehind:
    """One thread that ``pwrite``s queued tensors while the merge computes the next ones.

    At most ``limit`` bytes wait at a time (a single larger tensor is always accepted), so the
    overlap costs little memory; the thread ends whenever the queue is empty. A failed write is
    raised in the merge at the next submit or drain.
    """

    def __init__(self, limit: int = 128 << 20):
        self.limit = limit
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[int, int, torch.Tensor]] = collections.deque()
        self.in_flight = 0
        self.error: BaseException | None = None
        self.running = False

    def submit(self, fd: int, offset: int, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        with self.cond:
            while self.in_flight and self.in_flight + nbytes > self.limit and self.error is None:
                self.cond.wait()
            self._raise()
            self.queue.append((fd, offset, tensor))
            self.in_flight += nbytes
            if not self.running:
                self.running = True
                threading.Thread(target=self._run, name="hpc-merge-writer", daemon=True).start()

    def drain(self) -> None:
        """Wait until every queued tensor is on its way to disk (in the page cache)."""
        with self.cond:
            while self.in_flight and self.error is None:
                self.cond.wait()
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise OSError(f"writing the merged model failed: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.queue or self.error is not None:
                    self.running = False
                    self.cond.notify_all()
                    return
                fd, offset, tensor = self.queue.popleft()
            nbytes = tensor.numel() * tensor.element_size()
            try:
                view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
                done = 0
                while done < nbytes:
                    done += os.pwrite(fd, view[done:], offset + done)
            except BaseException as exc:  # noqa: BLE001 (handed to the merge thread)
                with self.cond:
                    self.error = exc
            del tensor
            with self.cond:
                self.in_flight -= nbytes
                self.cond.notify_all()


class StreamingTensorWriter(TensorWriter):
    """mergekit's writer with each tensor written through to its shard file on ``save_tensor``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserve = _HEADER_BOUND.get()  # header room in front of the data
        self._entries: dict[str, dict[str, Any]] = {}  # current shard: name -> header entry
        self._fd = -1  # the current shard, data written from 8 + reserve
        self._data_size = 0
        self._writes = _WriteBehind()
        self._slotted: set[str] = set()  # tensors written by row chunks: their save_tensor is a no-op
        self._open_slots = 0

    def _shard_path(self, index: int) -> str:
        prefix, extension = self._get_name_components()
        return os.path.join(self.out_path, f"{prefix}-{index + 1}.{extension}")

    def save_tensor(self, name: str, tensor: torch.Tensor, clone: bool = False) -> None:
        """Queue the tensor's bytes for its place in the current shard (starting a new shard when full).

        A tensor already written through :meth:`open_slot` is not written again (``tensor`` is
        then the chunked merge's placeholder)."""
        with self._lock:
            if name in self._slotted:
                self._slotted.discard(name)
                return
        if tensor.dtype not in _ST_DTYPES:
            raise TypeError(f"cannot write {name}: dtype {tensor.dtype} has no safetensors code")
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            offset = self._place(name, list(tensor.shape), tensor.dtype, nbytes)
            if nbytes:
                self._writes.submit(self._fd, offset, tensor)

    def open_slot(self, name: str, shape: list[int], dtype: torch.dtype) -> Slot:
        """Reserve ``name``'s place in the current shard for a tensor that arrives in row chunks.

        Why: a chunked merge (``chunked.py``) would otherwise assemble the whole output tensor before
        handing it over — at 7B the 1.09 GB embedding was what took linear's peak past 2 GiB.
        The header entry and offsets are the ones :meth:`save_tensor` would have given the whole
        tensor at this point, so the file is the same bytes; ``save_tensor(name, ...)`` then skips it.
        """
        if dtype not in _ST_DTYPES:
            raise TypeError(f"cannot write {name}: dtype {dtype} has no safetensors code")
        numel = int(torch.Size(shape).numel())
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        with self._lock:
            offset = self._place(name, list(shape), dtype, nbytes)
            self._slotted.add(name)
            self._open_slots += 1
        return Slot(self, self._fd, offset, nbytes // shape[0] if shape else nbytes, nbytes)

    def _place(self, name: str, shape: list[int], dtype: torch.dtype, nbytes: int) -> int:
        """The file offset of ``name``'s data in the current shard (caller holds the lock)."""
        if self._entries and self.max_shard_size > 0 and self.current_shard_size + nbytes > self.max_shard_size:
            self._flush_current_shard()
        if self._fd < 0:
            self._fd = os.open(self._shard_path(self.shards_written), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._data_size = 0
        offset = 8 + self.reserve + self._data_size
        self._entries[name] = {"dtype": _ST_DTYPES[dtype], "shape": shape,
                               "data_offsets": [self._data_size, self._data_size + nbytes]}
        self._data_size += nbytes
        self.current_shard_size += nbytes
        return offset

    def _flush_current_shard(self) -> None:
        """The header in front of the shard's data; mergekit's bookkeeping as before."""
        if not self._entries:
            return
        if self._open_slots:
            raise RuntimeError("internal: a shard was closed while a chunked tensor was still being written into it")
        self._writes.drain()
        index = self.shards_written
        path = self._shard_path(index)
        header = json.dumps({"__metadata__": {"format": "pt"}, **self._entries}, separators=(",", ":")).encode()
        if len(header) <= self.reserve:
            head = self.reserve.to_bytes(8, "little") + header + b" " * (self.reserve - len(header))
            done = 0
            while done < len(head):
                done += os.pwrite(self._fd, head[done:], done)
            os.close(self._fd)
        else:  # no room: write the exact header, then move the data behind it
            os.close(self._fd)
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
        self._entries, self._fd, self._data_size, self.current_shard_size = {}, -1, 0, 0


class Slot:
    """One tensor's reserved bytes in a shard, written row chunk by row chunk through the write-behind
    thread (at most its 128 MiB queued); :meth:`close` checks every byte was written."""

    def __init__(self, writer: StreamingTensorWriter, fd: int, offset: int, row_bytes: int, nbytes: int) -> None:
        self.writer, self.fd, self.offset, self.row_bytes, self.nbytes = writer, fd, offset, row_bytes, nbytes
        self.written = 0

    def write(self, row: int, part: torch.Tensor) -> None:
        """Rows ``row ..`` of the tensor (``part``: whole rows, the slot's dtype)."""
        self._write_at(row * self.row_bytes, part)

    def write_elements(self, start: int, part: torch.Tensor) -> None:
        """Flat elements ``start ..`` of the tensor (``part``: the slot's dtype, any shape)."""
        self._write_at(start * part.element_size(), part)

    def _write_at(self, at: int, part: torch.Tensor) -> None:
        part = part.detach().to("cpu").contiguous()
        size = part.numel() * part.element_size()
        if at + size > self.nbytes:
            raise RuntimeError("internal: a chunk runs past its tensor's slot")
        if size:
            self.writer._writes.submit(self.fd, self.offset + at, part)
        self.written += size

    def close(self) -> None:
        with self.writer._lock:
            self.writer._open_slots -= 1
        if self.written != self.nbytes:
            raise RuntimeError(f"internal: {self.written} of a tensor's {self.nbytes} bytes were written")


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


def reserve_headers(planned: list[tuple[Any, Any]], _out_dtype: str | None = None) -> list[tuple[Any, Any]]:
    """The plan transform (last of the planner hook's) that sizes the header room of writers made after it.

    The planner's output names set :func:`header_bound`; the plan itself is returned unchanged.
    """
    _HEADER_BOUND.set(header_bound([weight.name for weight, _task in planned]))
    return planned


@contextlib.contextmanager
def header_room() -> Iterator[None]:
    """No header room reserved (0: exact headers, one rewrite) until a plan inside the block sets it."""
    token = _HEADER_BOUND.set(0)
    try:
        yield
    finally:
        _HEADER_BOUND.reset(token)
