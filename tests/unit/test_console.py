"""Progress lines (hpc_merge.console) and the terminal's log filter (hpc_merge.verbosity), without a subprocess."""

from __future__ import annotations

import logging
import re
import time

import pytest

from hpc_merge import console, verbosity


@pytest.mark.parametrize(("argv", "expected"), [
    ([], ""), (["hydra.verbose=true"], "true"), (["hydra.verbose=false"], ""),
    (["x=1", "hydra.verbose=mergekit"], "mergekit"), (["hydra.verbose=[mergekit,transformers]"], "mergekit,transformers"),
])
def test_hydra_verbose_is_read_from_the_command_line(argv: list[str], expected: str) -> None:
    assert verbosity.parse_verbose(argv) == expected


def _record(name: str, level: int, msg: str = "m") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_terminal_filter_hides_library_chatter_keeps_errors_and_our_warnings_once(monkeypatch) -> None:
    monkeypatch.setenv(verbosity.VERBOSE_ENV, "")
    f = verbosity.QuietFilter()
    assert not f.filter(_record("mergekit.merge", logging.INFO))
    assert not f.filter(_record("transformers.modeling_utils", logging.WARNING))
    assert f.filter(_record("mergekit.merge", logging.ERROR))
    text = f"expert 0 wins only 42% ({time.time()})"
    assert f.filter(_record("hpc_merge.moe.gates", logging.WARNING, text))
    assert not f.filter(_record("hpc_merge.moe.gates", logging.WARNING, text))  # once
    monkeypatch.setenv(verbosity.VERBOSE_ENV, "mergekit")
    assert f.filter(_record("mergekit.merge", logging.INFO))
    assert not f.filter(_record("transformers.modeling_utils", logging.INFO))


def test_plain_progress_lines_are_timestamped_with_start_rate_eta_and_end(monkeypatch, capsys) -> None:
    monkeypatch.setenv(console.FORM_ENV, "plain")
    monkeypatch.setattr(console, "PLAIN_EVERY_S", 0.0)
    with console.task("zoo: training base", total=4, unit="step") as bar:
        for i in range(4):
            time.sleep(0.01)
            bar.update(i + 1, info=f"loss {1 / (i + 1):.3f}")
    lines = capsys.readouterr().out.splitlines()
    assert all(re.match(r"^\[\d\d:\d\d:\d\d\] zoo: training base: ", ln) for ln in lines), lines
    assert "0/4 step (0%) · started" in lines[0]
    assert any("step/s · ETA" in ln and "loss" in ln for ln in lines[1:-1])
    assert "4/4 step (100%) · done in" in lines[-1] and lines[-1].endswith("loss 0.250")


def test_a_phase_that_ends_before_show_after_prints_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setenv(console.FORM_ENV, "plain")
    with console.task("checking config and models", show_after=5.0) as bar:
        bar.update(advance=1)
    assert capsys.readouterr().out == ""
