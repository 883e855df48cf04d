"""Outputs can never destroy data: each data-loss case of issue 14 is refused before anything is written.

Inputs are real tiny models copied into the test's folder (the shared cache is never pointed at
as an output); every refusal is checked through the CLI's error policy (one line, exit 2) and
by fingerprinting what must stay intact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hpc_merge.app import main_guarded, run
from hpc_merge.config import compose
from hpc_merge.run.outputs import MARKER


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(overrides: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the overrides the way the CLI does; assert one line and exit 2; return the line."""
    cfg = compose(["logger=none", "models=tiny", *overrides])
    capsys.readouterr()  # only this run's output counts
    with pytest.raises(SystemExit) as info:
        main_guarded(cfg)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def my_math(tiny_pool, tmp_path: Path) -> Path:
    """A user's own model folder (a copy of the tiny math model)."""
    dest = tmp_path / "models" / "my_math"
    shutil.copytree(tiny_pool["math"], dest)
    return dest


def test_output_is_an_input_model_with_force_refused_and_input_intact(my_math: Path, _logs_dir: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    before = _fingerprint(my_math)
    line = _refused([f"models.math={my_math}", f"output={my_math}", "force=true"], capsys)
    assert line.startswith("error: output: ") and "is the input model" in line and "merge.models[0].model" in line
    assert _fingerprint(my_math) == before
    assert not _logs_dir.exists()  # refused before any folder was made


@pytest.mark.parametrize("where", ["inside", "contains"])
def test_output_inside_or_around_an_input_refused(where: str, my_math: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _fingerprint(my_math.parent)
    out = my_math / "merged" if where == "inside" else my_math.parent
    line = _refused([f"models.math={my_math}", f"output={out}", "force=true"], capsys)
    assert f"{where} the input model" in line.replace("is inside", "inside")
    assert _fingerprint(my_math.parent) == before


def test_folder_with_foreign_files_and_force_refused_files_intact(tiny_pool, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "thesis"
    (out / "chapters").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    (out / "chapters" / "one.tex").write_text("more work")
    before = _fingerprint(out)
    line = _refused([f"output={out}", "force=true"], capsys)
    assert "holds files hpc_merge did not write (chapters, thesis.tex)" in line
    assert _fingerprint(out) == before


def test_output_that_is_an_existing_file_refused(tiny_pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    line = _refused([f"output={out}", "force=true"], capsys)
    assert line.startswith("error: output: ") and "is an existing file" in line
    assert out.read_text() == "keep me"


def test_output_in_a_folder_that_is_a_file_refused(tiny_pool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").write_text("x")
    line = _refused([f"output={tmp_path / 'plain' / 'out'}"], capsys)
    assert "cannot be created" in line and "is a file" in line


@pytest.mark.parametrize("override,field", [("name=../../etc", "name"), ("run_id=/etc", "run_id"),
                                            ("run_id=..", "run_id"), ("name=a/b", "name"), ("run_id=''", "run_id")])
def test_names_and_run_ids_are_single_folder_names(override: str, field: str, tiny_pool, _logs_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused([override], capsys)
    assert line.startswith(f"error: {field}: "), line
    assert not _logs_dir.exists()


def test_logs_folder_and_run_dirs_refused_as_outputs(tiny_pool, _logs_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for out, what in [(_logs_dir, "is the logs folder"), (_logs_dir.parent, "contains the logs folder"),
                      (_logs_dir / "merge" / "default" / "abc", "is or holds run dirs")]:
        line = _refused([f"output={out}", "force=true"], capsys)
        assert what in line, line


def test_force_replaces_only_an_earlier_output_of_ours(tiny_pool, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = run(compose(["logger=none", "models=tiny", f"output={out}", "job.smoke.enabled=false"]))
    marker = json.loads((out / MARKER).read_text())
    assert first["status"] == "ok" and marker["tool"] == "hpc_merge" and marker["run_id"] == Path(marker["run_dir"]).name
    other = ["merge.models.0.parameters.weight=0.7"]  # another config (another run) into the same folder
    line = _refused([f"output={out}", "job.smoke.enabled=false", *other], capsys)
    assert "holds an earlier hpc_merge output" in line and "force=true" in line
    before = _fingerprint(out)
    second = run(compose(["logger=none", "models=tiny", f"output={out}", "job.smoke.enabled=false", "force=true", *other]))
    assert second["status"] == "ok" and _fingerprint(out) != before
    assert json.loads((out / MARKER).read_text())["run_dir"] != marker["run_dir"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []
