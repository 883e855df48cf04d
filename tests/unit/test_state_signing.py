"""Evolution state is never unpickled unless it carries this user's signature (no code from others)."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from hpc_merge.evolve.state import STATE_FILE, EvolutionState, StateRefused, key_file, load_state, save_state


class _Payload:
    """Unpickling this creates a file: the proof that a refused state was never unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.fixture
def key_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("HPC_MERGE_STATE_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def _state() -> EvolutionState:
    return EvolutionState(fingerprint="abc", es={"mean": [0.5, 0.5]}, rng=np.random.RandomState(5).get_state(), generation=3,
                          candidates=[{"key": "k1", "fitness": 0.7}])


def test_round_trip_creates_a_private_key(key_home: Path, tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    key = key_file()
    assert key == key_home / "hpc_merge" / "state.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    back = load_state(tmp_path)
    assert back.generation == 3 and back.candidates == [{"key": "k1", "fitness": 0.7}]
    assert np.array_equal(back.rng[1], np.random.RandomState(5).get_state()[1])


def _refused(run_dir: Path) -> str:
    with pytest.raises(StateRefused) as info:
        load_state(run_dir)
    msg = str(info.value)
    assert "\n" not in msg and str(run_dir / STATE_FILE) in msg
    return msg


def test_unsigned_pickle_is_refused_unread(key_home: Path, tmp_path: Path) -> None:
    planted = tmp_path / "code_ran"
    (tmp_path / STATE_FILE).write_bytes(pickle.dumps(_Payload(planted)))
    assert "not a signed" in _refused(tmp_path)
    assert not planted.exists()


def test_changed_payload_is_refused_unread(key_home: Path, tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    path = tmp_path / STATE_FILE
    blob = path.read_bytes()
    header_and_sig = len(blob) - len(pickle.dumps(_state(), protocol=pickle.HIGHEST_PROTOCOL))
    planted = tmp_path / "code_ran"
    path.write_bytes(blob[:header_and_sig] + pickle.dumps(_Payload(planted)))
    assert "does not carry your signature" in _refused(tmp_path)
    assert not planted.exists()


def test_state_signed_with_another_key_is_refused(key_home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone_else"))
    save_state(tmp_path, _state())
    monkeypatch.setenv("XDG_CONFIG_HOME", str(key_home))
    assert "does not carry your signature" in _refused(tmp_path)


def test_older_format_version_is_refused(key_home: Path, tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    path = tmp_path / STATE_FILE
    blob = bytearray(path.read_bytes())
    from hpc_merge.evolve.state import MAGIC

    blob[len(MAGIC):len(MAGIC) + 2] = (1).to_bytes(2, "big")
    path.write_bytes(bytes(blob))
    assert "another version" in _refused(tmp_path)


def test_a_key_others_can_read_signs_nothing(key_home: Path, tmp_path: Path) -> None:
    save_state(tmp_path, _state())
    os.chmod(key_file(), 0o644)
    with pytest.raises(StateRefused) as info:
        load_state(tmp_path)
    assert "chmod 600" in str(info.value)
