"""``pip install .`` (a wheel, not only editable) ships conf/ so ``python -m hpc_merge`` works anywhere."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_every_config_file(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, timeout=300)
    wheel = next(tmp_path.glob("hpc_merge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"hpc_merge/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert "hpc_merge/__main__.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "hpc-merge = hpc_merge.__main__:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
