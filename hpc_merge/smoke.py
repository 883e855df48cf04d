"""The inference smoke test run on every model we write: it loads, it generates, it is finite.

A merge can produce a model that loads but is garbage (NaN weights, shape crimes); this catches
the loud failures cheaply. What it prompts with must fit the models, or its figures alarm instead
of inform (a tiny zoo model asked "The quick brown fox" answers noise, and a random model's
perplexity on English is a five-digit number that says nothing). So the inputs come from the pool:

- zoo models (``zoo:`` / ``zoo-test:`` references): one held-out test prompt per skill with its
  expected answer; the figures are how many it answers exactly and the perplexity of the answers;
- other models: the user's ``job.smoke.prompts`` and ``job.smoke.text``; without them the test
  still loads, generates and checks finiteness on a neutral prompt and text, and reports no figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.errors import JobFailed

#: Only a finiteness check for models we know nothing about (the figure is not shown).
BUILTIN_TEXT = (
    "Model merging combines the weights of several fine-tuned language models into one model. "
    "The quick brown fox jumps over the lazy dog."
)
NEUTRAL_PROMPTS = ("The",)


@dataclass
class SmokeInputs:
    """Prompts (with expected answers for zoo models), perplexity text, and where they came from."""

    prompts: list[str]
    answers: list[str] | None = None
    text: str | None = None
    source: str = "default"  # zoo | user | default
    text_source: str = "default"  # zoo | user | default (default: finiteness only, no figure shown)
    extra: dict[str, Any] = field(default_factory=dict)


def zoo_size(refs: list[str]) -> str | None:
    """``full``/``test`` when every reference is a zoo model of one size, else None."""
    if not refs:
        return None
    sizes = {"test" if str(r).startswith("zoo-test:") else "full" if str(r).startswith("zoo:") else None for r in refs}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


def smoke_inputs(refs: list[str], prompts: list[str] | None = None, text: str | None = None) -> SmokeInputs:
    """What to test the output of a merge of ``refs`` with (see the module docstring)."""
    size = zoo_size(refs)
    inputs = SmokeInputs(prompts=list(prompts) if prompts else list(NEUTRAL_PROMPTS),
                         source="user" if prompts else "default", text=text,
                         text_source="user" if text else "default")
    if size is not None and not prompts:
        from hpc_merge.zoo import ensure_tasks
        from hpc_merge.zoo.tasks import read_jsonl

        rows = [read_jsonl(splits["test"])[0] for splits in ensure_tasks(size).values()]
        inputs.prompts, inputs.answers, inputs.source = [r["prompt"] for r in rows], [r["answer"] for r in rows], "zoo"
    if size is not None and not text:
        inputs.text_source = "zoo"  # answer perplexity on the zoo prompts, computed in smoke_test
    return inputs


def smoke_test(model_dir: str | Path, prompts: list[str] | SmokeInputs, max_new_tokens: int = 8,
               text: str | None = None) -> dict[str, Any]:
    """Load ``model_dir`` with stock transformers, generate from the prompts, measure perplexity.

    ``prompts`` is a list (user prompts) or :class:`SmokeInputs`. Raises :class:`JobFailed` on
    NaN/Inf logits or perplexity. Returns the metrics, the samples and what they mean.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpc_merge import console

    inputs = prompts if isinstance(prompts, SmokeInputs) else smoke_inputs([], list(prompts), text)
    with console.task("smoke test", total=len(inputs.prompts) + 2, unit="step") as bar:
        bar.update(info="loading with transformers")
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        model.eval()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        bar.update(advance=1, info="generating")
        samples = []
        with torch.no_grad():
            for i, prompt in enumerate(inputs.prompts):
                ids = tok(prompt, return_tensors="pt")
                if ids["input_ids"].shape[1] == 0:
                    raise JobFailed(f"tokenizer of {model_dir} encodes {prompt!r} to nothing (empty tokenizer)")
                logits = model(**ids).logits
                if not torch.isfinite(logits).all():
                    raise JobFailed(f"smoke test: non-finite logits from {model_dir} for prompt {prompt!r}")
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
                sample = {"prompt": prompt,
                          "completion": tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)}
                if inputs.answers is not None:
                    expected = inputs.answers[i]
                    sample |= {"expected": expected,
                               "correct": sample["completion"].strip().startswith(expected.strip())}
                samples.append(sample)
                bar.update(advance=1)
            bar.update(info="perplexity")
            if inputs.text_source == "zoo" and inputs.answers is not None:
                loss = _answer_loss(model, tok, inputs.prompts, inputs.answers)
            else:
                enc = tok(inputs.text or BUILTIN_TEXT, return_tensors="pt")
                loss = model(**enc, labels=enc["input_ids"]).loss.item()
            bar.update(advance=1, info="")
    ppl = math.exp(loss) if loss < 700 else float("inf")
    if not math.isfinite(ppl):
        raise JobFailed(f"smoke test: perplexity of {model_dir} is {ppl}")
    n_params = sum(p.numel() for p in model.parameters())
    return {"perplexity": ppl, "loss": loss, "n_params": n_params, "samples": samples,
            "prompts_from": inputs.source, "perplexity_on": {"zoo": "zoo answers", "user": "job.smoke.text"}.get(
                inputs.text_source, "built-in text (finiteness check only)")}


def _answer_loss(model: Any, tok: Any, prompts: list[str], answers: list[str]) -> float:
    """Mean negative log-likelihood per answer token (the zoo's answers after their prompts)."""
    from hpc_merge.models.tokenizer import split_pair

    total, count = 0.0, 0
    for prompt, answer in zip(prompts, answers, strict=True):
        import torch

        ctx, ans = split_pair(tok, prompt, answer)
        ids = torch.tensor([ctx + ans])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, len(ctx) - 1:-1], dim=-1)
        total -= logp.gather(1, torch.tensor(ans).unsqueeze(1)).sum().item()
        count += len(ans)
    return total / max(count, 1)


def describe(result: dict[str, Any]) -> list[str]:
    """The smoke test in a few lines for the end-of-run summary; no figure that means nothing."""
    samples = result.get("samples") or []
    src = result.get("prompts_from", "user")
    lines = []
    if src == "zoo":
        right = sum(bool(s.get("correct")) for s in samples)
        lines.append(f"smoke test: loads and generates; {right}/{len(samples)} zoo test prompts answered exactly, "
                     f"answer perplexity {result['perplexity']:.3g}")
        lines += [f"  {s['prompt']!r} -> {s['completion']!r}" + ("" if s.get("correct") else f" (want {s['expected']!r})")
                  for s in samples[:4]]
    elif src == "user":
        lines.append("smoke test: loads and generates" + (f"; perplexity {result['perplexity']:.4g} on job.smoke.text"
                                                         if result.get("perplexity_on") == "job.smoke.text" else ""))
        lines += [f"  {s['prompt']!r} -> {s['completion']!r}" for s in samples[:4]]
    else:
        lines.append("smoke test: loads, generates, logits finite (set job.smoke.prompts / job.smoke.text "
                     "for samples and a perplexity)")
    return lines
