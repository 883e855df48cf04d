"""The zoo's synthetic skills: seeded, held-out splits of (prompt, answer) pairs.

Every skill has its own prompt prefix, so a merged model can tell which skill a prompt asks for,
and every answer is written one character per word (" 4 6", " d c a"): the byte-level BPE can then
never merge two answer characters into one token, so a skill never depends on how BPE happened to
split a string. Splits are disjoint by input (a test prompt is never seen in training).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SPLITS = ("train", "validation", "test")

#: Letters the string skills draw from; few letters = a tiny model learns the skills in seconds.
LETTERS = "abcdefghij"


def _spaced(chars: str) -> str:
    """``"46"`` -> ``" 4 6"``: one pre-token (space + character) per answer character."""
    return "".join(f" {c}" for c in chars)


def _addition(rng: random.Random, max_operand: int) -> tuple[str, str]:
    """Carrying addition: kept for callers that draw prompts; too slow to learn for the zoo's experts."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return f"add:{_spaced(str(a))} +{_spaced(str(b))} =", _spaced(str(a + b))


def _complement(rng: random.Random, min_len: int, max_len: int) -> tuple[str, str]:
    """Nines' complement (``999 - 374 = 625``, the digit-wise step of subtraction by complement).

    Chosen over carrying addition, which a tiny model does not learn in the seconds we train.
    """
    n = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_len, max_len)))
    return f"complement:{_spaced(n)} =", _spaced("".join(str(9 - int(d)) for d in n))


def _letters(rng: random.Random, min_len: int, max_len: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(min_len, max_len)))


def _reversal(rng: random.Random, min_len: int, max_len: int) -> tuple[str, str]:
    s = _letters(rng, min_len, max_len)
    return f"reverse:{_spaced(s)} ->", _spaced(s[::-1])


def _sorting(rng: random.Random, min_len: int, max_len: int) -> tuple[str, str]:
    s = _letters(rng, min_len, max_len)
    return f"sort:{_spaced(s)} ->", _spaced("".join(sorted(s)))


def _shift(rng: random.Random, min_len: int, max_len: int) -> tuple[str, str]:
    s = _letters(rng, min_len, max_len)
    nxt = {c: LETTERS[(i + 1) % len(LETTERS)] for i, c in enumerate(LETTERS)}
    return f"next:{_spaced(s)} ->", _spaced("".join(nxt[c] for c in s))


#: skill name -> generator(rng, **params) of one (prompt, answer) pair.
GENERATORS: dict[str, Callable[..., tuple[str, str]]] = {
    "complement": _complement,
    "addition": _addition,
    "reversal": _reversal,
    "sorting": _sorting,
    "shift": _shift,
}


def make_splits(task: str, seed: int, sizes: dict[str, int], params: dict) -> dict[str, list[dict[str, str]]]:
    """Draw distinct prompts for ``task`` and deal them into disjoint splits, deterministically.

    ``sizes`` maps split -> number of examples; the seed is mixed with the task name so two skills
    never share a random stream.
    """
    gen = GENERATORS[task]
    rng = random.Random(f"{seed}:{task}")
    want = sum(sizes.values())
    seen: dict[str, str] = {}
    tries = 0
    while len(seen) < want:
        prompt, answer = gen(rng, **params)
        seen.setdefault(prompt, answer)
        tries += 1
        if tries > 50 * want:
            raise ValueError(f"task {task!r}: only {len(seen)} distinct prompts for {want} wanted; "
                             f"widen its parameters {params}")
    pairs = [{"prompt": p, "answer": a} for p, a in seen.items()]
    out, start = {}, 0
    for split in SPLITS:  # fixed order, so a split's content depends only on (seed, sizes)
        out[split] = pairs[start:start + sizes[split]]
        start += sizes[split]
    return out


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    """One ``{"prompt", "answer"}`` object per line (the evaluator's and lm-eval's input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Rows of a JSONL task file; each needs ``prompt`` and ``answer``."""
    rows = []
    with open(path) as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                row = json.loads(line)
                if "prompt" not in row or "answer" not in row:
                    raise ValueError(f"{path}:{i}: a task line needs 'prompt' and 'answer'")
                rows.append(row)
    return rows
