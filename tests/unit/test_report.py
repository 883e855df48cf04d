"""The merge report: its files, a real PNG, numbers equal to the evaluator's, logged to W&B offline."""

from __future__ import annotations

import json

import pytest
import torch

from hpc_merge.evaluate import evaluate_model, load_model, load_tasks, load_tokenizer
from hpc_merge.report import format_table, merge_report
from hpc_merge.tracking import make_tracker
from hpc_merge.wandb_files import find_runs, read_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def averaged(test_zoo):
    """An in-memory merge (the mean of two experts), the way evolution hands models over."""
    a, b = load_model(test_zoo.experts["sorting"]), load_model(test_zoo.experts["shift"])
    with torch.no_grad():
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            pa.copy_((pa + pb) / 2)
    return a


def test_report_files_numbers_and_tracking(test_zoo, averaged, tmp_path):
    tasks = load_tasks(["zoo:sorting", "zoo:shift"], size="test")
    tok = load_tokenizer(test_zoo.base)
    models = [("base", "base", test_zoo.base), ("sorting", "source", test_zoo.experts["sorting"]),
              ("shift", "source", test_zoo.experts["shift"]), ("merged", "merged", averaged)]
    tracker = make_tracker({"kind": "wandb", "mode": "offline"}, tmp_path, "report-test", {})
    rows = merge_report(tmp_path, models, tasks, tracker=tracker, limit=20, tokenizer=tok)
    tracker.finish()

    assert [(r["model"], r["task"]) for r in rows] == [(m, t.name) for m, _, _ in models for t in tasks]
    for name, _, model in models:
        expected = evaluate_model(model, tasks, tokenizer=tok, limit=20)
        for r in (r for r in rows if r["model"] == name):
            assert (r["accuracy"], r["loglik"], r["n"]) == pytest.approx(
                (expected[r["task"]]["accuracy"], expected[r["task"]]["loglik"], 20))

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"] == json.loads(json.dumps(rows))
    assert {r["role"] for r in report["rows"]} == {"base", "source", "merged"}
    kept = report["retention"]["sorting"]
    sorting_acc = next(r["accuracy"] for r in rows if r["model"] == "sorting" and r["task"] == "sorting")
    merged_acc = next(r["accuracy"] for r in rows if r["model"] == "merged" and r["task"] == "sorting")
    assert kept["best_source"] == "sorting" and kept["kept"] == pytest.approx(merged_acc / sorting_acc)

    md = (tmp_path / "report.md").read_text()
    assert format_table(rows) in md and md.count("\n| ") >= 1 + len(models)

    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(str(png))
    assert image.shape[0] == 400 and image.shape[1] >= 600 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # bars were drawn, not a blank canvas

    (run,) = find_runs(tmp_path)
    logged = read_run(run)
    flat = {k: v for row in logged["history"] for k, v in row.items()}
    assert flat["merge_report/_type"] == "table-file" and flat["merge_report/nrows"] == len(rows)
    assert flat["merge_report_plot/_type"] == "image-file"
    assert (flat["merge_report_plot/height"], flat["merge_report_plot/width"]) == image.shape[:2]
    assert logged["summary"]["merged/sorting/accuracy"] == pytest.approx(merged_acc)


def test_format_table_pivots_models_by_task():
    rows = [{"model": "m", "role": "merged", "task": t, "accuracy": a, "loglik": -0.5, "n": 2}
            for t, a in (("x", 0.5), ("y", 1.0))]
    lines = format_table(rows).splitlines()
    assert lines[0] == "| model | role | x | y |"
    assert lines[2] == "| m | merged | 50.0% (-0.500) | 100.0% (-0.500) |"


def test_bad_role_is_rejected(test_zoo, tmp_path):
    with pytest.raises(ValueError, match="role"):
        merge_report(tmp_path, [("x", "expert", test_zoo.base)], load_tasks(["zoo:sorting"], size="test"))
