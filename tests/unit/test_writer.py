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
