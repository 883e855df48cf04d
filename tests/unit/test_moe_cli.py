"""mergekit-moe YAMLs run unchanged through ``python -m hpc_merge mergekit_yaml=PATH output=DIR``.

The good YAML is one mergekit-moe itself rejects with ``sys.exit(1)`` (Qwen2 experts, no shared
expert); here it becomes a Qwen2-MoE that stock transformers loads.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from hpc_merge.models.tiny import ensure_tiny
from tests.conftest import run_cli


def _yaml(tmp_path: Path, **changes) -> Path:
    data = {
        "base_model": str(ensure_tiny("base")),
        "gate_mode": "hidden",
        "dtype": "bfloat16",
        "experts_per_token": 2,
        "experts": [
            {"source_model": str(ensure_tiny("math")), "positive_prompts": ["12+34=", "7+8="]},
            {"source_model": str(ensure_tiny("coder")), "positive_prompts": ["def f(x):", "return x"]},
        ],
    }
    data.update(changes)
    path = tmp_path / "moe.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_mergekit_itself_exits_on_this_yaml(tmp_path: Path) -> None:
    """The reason for our writer: mergekit-moe's build() ends the process for Qwen2 without shared expert."""
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build

    cfg = MoEMergeConfig.model_validate(yaml.safe_load(_yaml(tmp_path).read_text()))
    with pytest.raises(SystemExit):
        build(cfg, str(tmp_path / "mk_out"), MergeOptions(), device="cpu")


def test_mergekit_moe_yaml_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli(f"mergekit_yaml={_yaml(tmp_path)}", f"output={out}", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert cfg["num_experts"] == 2 and cfg["shared_expert_intermediate_size"] == 0
    base = ensure_tiny("base")
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert "Mixture of experts" in (out / "README.md").read_text()
    assert yaml.safe_load((out / "mergekit_moe_config.yml").read_text())["gate_mode"] == "hidden"
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert not list(tmp_path.glob(".out.tmp-*")), "the temp folder was renamed, not left behind"
    run_dir = Path(proc.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["kind"] == "moe"
    assert result["output_model"] == str(out)
    assert result["metrics"]["perplexity"] > 1  # the smoke test ran on the MoE
    assert result["metrics"]["routing_own_prompts"]["n_prompts"] == 4


def test_bad_yaml_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same path as the CLI (compose, then the app's error policy), in-process to keep it fast."""
    from hpc_merge.app import main_guarded
    from hpc_merge.config import compose

    cfg = compose([f"mergekit_yaml={_yaml(tmp_path, gate_mode='hiden')}", f"output={tmp_path / 'out'}", "logger=none"])
    with pytest.raises(SystemExit) as info:
        main_guarded(cfg)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: moe.gate_mode: unknown gate mode 'hiden'"), lines
    assert not (tmp_path / "out").exists()
