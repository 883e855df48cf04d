"""peft is imported only when mergekit really uses it (a LoRA reference), and then it is the real one."""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, sys, importlib.metadata
import hpc_merge.mergekit_adapter  # installs the stand-in before mergekit is imported
import mergekit.merge, mergekit.common
out = {"loaded_by_merge_import": any(m.startswith("peft.") for m in sys.modules),
       "is_stand_in": type(sys.modules["peft"]).__name__}
import inspect
inspect.getmodule(json)  # walks sys.modules reading __file__: must not import peft
out["loaded_by_inspect"] = any(m.startswith("peft.") for m in sys.modules)
import peft
out["version"] = peft.__version__ == importlib.metadata.version("peft")
cls = mergekit.common.peft.PeftModel  # what mergekit calls for a LoRA reference
out["real_class"] = cls.__module__
out["same_module"] = sys.modules["peft"].PeftModel is cls
print(json.dumps(out))
"""


def test_peft_loads_on_first_use_only() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded_by_merge_import"] is False and out["is_stand_in"] == "_StandIn", out
    assert out["loaded_by_inspect"] is False, out
    assert out["version"] is True, out
    assert out["real_class"].startswith("peft."), out
    assert out["same_module"] is True, out
