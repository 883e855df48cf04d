"""The whole search state, written atomically after every generation so any run can resume.

One pickle holds the CMA-ES object, numpy's global RNG (cma draws its samples from it), every
candidate with its scores, the per-generation history and the result cache. It is written to a
temp file beside ``state.pkl`` and renamed over it: a kill at any moment leaves either the
previous generation's state or this one's, never a torn file.

Unpickling runs code named in the file, and run dirs often sit on shared storage that others can
write. So the file is signed: a header (magic, format version) and an HMAC-SHA256 over header and
pickle, keyed by a secret only this user can read (:func:`key_file`, created 0600 on first use).
The version and the signature are checked before a single byte is unpickled; an unsigned, foreign
or changed file is refused with one line, never loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_bytes
from hpc_merge.errors import JobFailed

STATE_FILE = "state.pkl"
VERSION = 2  # 1: plain pickle (never loaded any more); 2: signed
MAGIC = b"hpc_merge evolution state\n"
_HEADER = MAGIC + struct.pack(">H", VERSION)
_SIG_BYTES = 32


class StateRefused(JobFailed):
    """A state file that is not verifiably this user's (unsigned, foreign, changed): not unpickled."""


@dataclass
class EvolutionState:
    """Everything needed to continue a search exactly where it stopped."""

    fingerprint: str  # hash of the search settings; a resume with other settings is refused
    es: Any  # cma.CMAEvolutionStrategy
    rng: Any  # numpy.random.get_state()
    generation: int = 0  # completed generations
    candidates: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # search time summed over sessions (the wall-time budget)
    version: int = VERSION

    @property
    def evaluations(self) -> int:
        """Distinct candidates the search has scored (cache hits on earlier ones do not count)."""
        return len({c["key"] for c in self.candidates})


def key_file() -> Path:
    """The signing key: ``$HPC_MERGE_STATE_KEY``, else ``$XDG_CONFIG_HOME/hpc_merge/state.key``
    (``~/.config/...``). It must be private to this user; SLURM jobs see it through the shared home."""
    if os.environ.get("HPC_MERGE_STATE_KEY"):
        return Path(os.environ["HPC_MERGE_STATE_KEY"]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "hpc_merge" / "state.key"


def _key() -> bytes:
    """This user's key, created (0600, in a 0700 folder) on first use; refused if others can read it."""
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise StateRefused(f"the state signing key {path} is readable or writable by others (or not yours): "
                           f"a key others can read signs nothing; run chmod 600 {path} (or delete it)")
    key = path.read_text().strip()
    if len(key) < 32:
        raise StateRefused(f"the state signing key {path} is too short or empty: delete it (a new one is made)")
    return key.encode()


def _sign(data: bytes) -> bytes:
    return hmac.new(_key(), data, hashlib.sha256).digest()


def save_state(run_dir: str | Path, state: EvolutionState) -> Path:
    """Sign and write ``state`` to ``run_dir/state.pkl`` atomically and durably (temp file + fsync + rename)."""
    path = Path(run_dir) / STATE_FILE
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    write_bytes(path, _HEADER + _sign(_HEADER + payload) + payload, durable=True)
    return path


def load_state(run_dir: str | Path) -> EvolutionState | None:
    """The saved state, or None when there is none yet; :class:`StateRefused` for a file not signed by us."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    blob = path.read_bytes()
    fix = f"unpickling it could run code from it; move {path} away to start the search over"
    if not blob.startswith(MAGIC):
        raise StateRefused(f"{path} is not a signed hpc_merge evolution state (unsigned, e.g. from an older "
                           f"version, or another file): not loaded; {fix}")
    header = blob[:len(_HEADER)]
    if header != _HEADER:
        raise StateRefused(f"{path} was written by another version of hpc_merge's evolution state: not loaded; "
                           f"move it away to start over")
    sig, payload = blob[len(_HEADER):len(_HEADER) + _SIG_BYTES], blob[len(_HEADER) + _SIG_BYTES:]
    if not hmac.compare_digest(sig, _sign(header + payload)):
        raise StateRefused(f"{path} does not carry your signature (changed after it was written, or signed "
                           f"with another key than {key_file()}): not loaded; {fix}")
    return pickle.loads(payload)
