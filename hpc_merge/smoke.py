"""The inference smoke test run on every model we write: it loads, it generates, it is finite.

A merge can produce a model that loads but is garbage (NaN weights, shape crimes); this catches
the loud failures cheaply. Perplexity on a small fixed text gives a number to compare runs by.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpc_merge.errors import JobFailed

BUILTIN_TEXT = (
    "Model merging combines the weights of several fine-tuned language models into one model. "
    "The quick brown fox jumps over the lazy dog. 12+34=46. reverse: abc -> cba."
)


def smoke_test(model_dir: str | Path, prompts: list[str], max_new_tokens: int = 8,
               text: str | None = None) -> dict[str, Any]:
    """Load ``model_dir`` with stock transformers, generate from ``prompts``, measure perplexity.

    Raises :class:`JobFailed` on NaN/Inf logits or perplexity. Returns the metrics and samples.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    samples = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")
            if ids["input_ids"].shape[1] == 0:
                raise JobFailed(f"tokenizer of {model_dir} encodes {prompt!r} to nothing (empty tokenizer)")
            logits = model(**ids).logits
            if not torch.isfinite(logits).all():
                raise JobFailed(f"smoke test: non-finite logits from {model_dir} for prompt {prompt!r}")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            samples.append({"prompt": prompt,
                            "completion": tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)})
        enc = tok(text or BUILTIN_TEXT, return_tensors="pt")
        loss = model(**enc, labels=enc["input_ids"]).loss.item()
    ppl = math.exp(loss) if loss < 700 else float("inf")
    if not math.isfinite(ppl):
        raise JobFailed(f"smoke test: perplexity of {model_dir} is {ppl}")
    n_params = sum(p.numel() for p in model.parameters())
    return {"perplexity": ppl, "loss": loss, "n_params": n_params, "samples": samples}
