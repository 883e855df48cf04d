"""Gain kept, (merged - base) / (expert - base): in the merge report and in the evolve test report."""

from __future__ import annotations

import math

import pytest

from hpc_merge.evolve.quality import format_gain_table, gain_report
from hpc_merge.report import format_table, gain_kept, retention


def _rows(merged: dict[str, float]) -> list[dict]:
    acc = {"base": {"x": 0.5, "y": 0.9}, "ex": {"x": 0.9, "y": 0.9}, "ey": {"x": 0.4, "y": 1.0}, "m": merged}
    roles = {"base": "base", "ex": "source", "ey": "source", "m": "merged"}
    return [{"model": n, "role": roles[n], "task": t, "accuracy": a, "loglik": -1.0, "n": 10}
            for n, by in acc.items() for t, a in by.items()]


def test_gain_kept_is_the_share_of_the_experts_gain() -> None:
    assert gain_kept(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert gain_kept(0.5, 0.5, 0.9) == 0.0 and gain_kept(0.9, 0.5, 0.9) == 1.0
    assert gain_kept(0.4, 0.5, 0.9) < 0  # worse than the base: negative, not clipped
    assert math.isnan(gain_kept(0.8, 0.9, 0.9))  # no gain to keep


def test_the_merge_report_shows_gain_kept_beside_accuracy() -> None:
    rows = _rows({"x": 0.8, "y": 0.9})
    kept = retention(rows)
    # y: the base already scores 0.9 of the expert's 1.0 -> "90 % kept" by accuracy, 0 % of the gain
    assert kept["y"]["kept"] == pytest.approx(0.9) and kept["y"]["gain_kept"] == pytest.approx(0.0)
    assert kept["x"]["gain_kept"] == pytest.approx(0.75) and kept["x"]["base_accuracy"] == 0.5
    assert format_table(rows).splitlines()[-1] == "| gain kept | merged | 75.0% | 0.0% |"
    no_base = [r for r in rows if r["role"] != "base"]
    assert "gain_kept" not in retention(no_base)["x"] and "gain kept" not in format_table(no_base)


def test_evolve_gain_report_picks_each_tasks_expert_and_the_oracle() -> None:
    def out(acc: dict[str, float]) -> dict:
        return {"status": "ok", "metrics": {t: {"accuracy": a, "loglik": -1.0} for t, a in acc.items()}}

    refs = {"b": out({"x": 0.5, "y": 0.6}), "ex": out({"x": 0.9, "y": 0.5}), "ey": out({"x": 0.4, "y": 1.0})}
    rep = gain_report({"best": out({"x": 0.8, "y": 0.9}), "bad": {"status": "failed", "reason": "r"}},
                      refs, "b", ["ex", "ey"])
    assert rep["experts"] == {"x": "ex", "y": "ey"}
    assert rep["rows"]["oracle"]["accuracy"] == {"x": 0.9, "y": 1.0}
    assert rep["rows"]["oracle"]["gain_kept"] == {"x": 1.0, "y": 1.0}
    assert rep["rows"]["best"]["gain_kept"] == pytest.approx({"x": 0.75, "y": 0.75})
    assert rep["rows"]["best"]["mean_accuracy"] == pytest.approx(0.85)
    table = format_gain_table(rep, "test")
    assert "| evolved best | 0.800 (75 %) | 0.900 (75 %) | 0.8500 |" in table and "failed" in table
