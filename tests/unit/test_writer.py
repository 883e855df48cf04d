"""The streaming shard writer (``mergekit_adapter/writer.py``) writes what mergekit's writer writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mergekit.io.tensor_writer import TensorWriter
from safetensors import safe_open

from hpc_merge.mergekit_adapter import writer as streaming
from hpc_merge.mergekit_adapter.writer import StreamingTensorWriter, header_bound


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"embed": torch.randn(50, 16, generator=g).to(torch.bfloat16), "norm": torch.randn(16, generator=g),
            "half": torch.randn(3, 4, 5, generator=g).half(), "ids": torch.arange(7), "flag": torch.tensor([True]),
            "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3),
            "strided": torch.randn(8, 6, generator=g).t()}  # not contiguous


def _write(cls: type, out: Path, shard: int, reserve: int = 0) -> None:
    token = streaming._HEADER_BOUND.set(reserve)
    try:
        writer = cls(str(out), max_shard_size=shard)
    finally:
        streaming._HEADER_BOUND.reset(token)
    for name, t in _tensors().items():
        writer.save_tensor(name, t)
    writer.finalize()


@pytest.mark.parametrize("room", ["planned", "none", "too small"])
@pytest.mark.parametrize("shard", [0, 10**9, 700])
def test_same_files_and_tensors_as_mergekits_writer(tmp_path: Path, shard: int, room: str) -> None:
    """Same shard names, same index, every tensor equal (dtype, shape, values); no temp files left.

    ``planned``: the header goes into the room reserved from the planned names (no copy);
    ``none`` / ``too small``: the shard is rewritten behind its exact header.
    """
    reserve = {"planned": header_bound(list(_tensors())), "none": 0, "too small": 16}[room]
    _write(TensorWriter, tmp_path / "theirs", shard)
    _write(StreamingTensorWriter, tmp_path / "ours", shard, reserve)
    for f in (tmp_path / "ours").glob("*.safetensors"):
        size = int.from_bytes(f.read_bytes()[:8], "little")
        assert (size == reserve) == (room == "planned"), f.name
    names = sorted(os.listdir(tmp_path / "theirs"))
    assert sorted(os.listdir(tmp_path / "ours")) == names
    assert (len(names) > 2) == (shard == 700)
    index = "model.safetensors.index.json"
    if index in names:
        assert json.loads((tmp_path / "ours" / index).read_text())["weight_map"] == \
            json.loads((tmp_path / "theirs" / index).read_text())["weight_map"]
    expected = _tensors()
    seen = set()
    for name in names:
        if not name.endswith(".safetensors"):
            continue
        with safe_open(str(tmp_path / "ours" / name), "pt") as ours, \
                safe_open(str(tmp_path / "theirs" / name), "pt") as theirs:
            assert set(ours.keys()) == set(theirs.keys())
            assert ours.metadata() == {"format": "pt"}
            for key in ours.keys():
                a = ours.get_tensor(key)
                assert a.dtype == expected[key].dtype and torch.equal(a, expected[key]), key
                seen.add(key)
    assert seen == set(expected)


def test_a_failed_background_write_fails_the_merge(tmp_path: Path) -> None:
    """A write error in the writer thread is raised in the merge (no silently short shard)."""
    from hpc_merge.mergekit_adapter.writer import _WriteBehind

    (tmp_path / "ro").write_bytes(b"")
    fd = os.open(tmp_path / "ro", os.O_RDONLY)  # pwrite on it fails with EBADF
    writes = _WriteBehind()
    try:
        writes.submit(fd, 0, torch.ones(10))
        with pytest.raises(OSError, match="writing the merged model failed"):
            writes.drain()
    finally:
        os.close(fd)


@pytest.mark.parametrize("shard", [0, 700])
def test_rows_written_through_a_slot_make_the_same_files(tmp_path: Path, shard: int) -> None:
    """A tensor written in row chunks (``open_slot``, as a chunked merge does) gives the bytes its
    whole ``save_tensor`` would; its own later ``save_tensor`` (the placeholder) writes nothing."""
    reserve = header_bound(list(_tensors()))
    _write(StreamingTensorWriter, tmp_path / "whole", shard, reserve)
    token = streaming._HEADER_BOUND.set(reserve)
    try:
        writer = StreamingTensorWriter(str(tmp_path / "rows"), max_shard_size=shard)
    finally:
        streaming._HEADER_BOUND.reset(token)
    for name, t in _tensors().items():
        if name == "embed":
            slot = writer.open_slot(name, list(t.shape), t.dtype)
            for a in range(0, t.shape[0], 7):  # uneven chunks, last one short
                slot.write(a, t[a:a + 7])
            slot.close()
            t = torch.empty(0, dtype=t.dtype)  # what the chunked merge hands to SaveTensor
        writer.save_tensor(name, t)
    writer.finalize()
    names = sorted(os.listdir(tmp_path / "whole"))
    assert sorted(os.listdir(tmp_path / "rows")) == names
    for name in names:
        assert (tmp_path / "rows" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_slot_left_short_or_overrun_is_an_error(tmp_path: Path) -> None:
    writer = StreamingTensorWriter(str(tmp_path / "out"), max_shard_size=0)
    slot = writer.open_slot("w", [4, 3], torch.float32)
    with pytest.raises(RuntimeError, match="runs past"):
        slot.write(3, torch.zeros(2, 3))
    slot.write(0, torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="24 of a tensor's 48 bytes"):
        slot.close()
    slot2 = writer.open_slot("v", [2], torch.float32)
    with pytest.raises(RuntimeError, match="still being written"):
        writer.finalize()
    slot2.write(0, torch.zeros(2))
    slot2.close()
