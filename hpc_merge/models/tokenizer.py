"""A real, small Hugging Face tokenizer built locally (no hub).

transformers 5 forces ``Qwen2Tokenizer`` on any dir whose config says ``qwen2``; a WordLevel
tokenizer then loads as an empty one, silently. A byte-level BPE tokenizer loads correctly for
every architecture we build, so that is the only kind made here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"

#: Text used to train the BPE merges: digits, letters and punctuation the zoo tasks use.
DEFAULT_CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 4,
    "0123456789 + = 12+34=46 99+1=100 reverse: abc -> cba sort: dcba -> abcd",
    "question: what is the capital of x? answer: y. fact: alpha is red, beta is blue.",
    "Merging models combines the skills of experts into one network.",
]


def build_tokenizer(out_dir: str | Path, corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 320):
    """Train a byte-level BPE tokenizer on ``corpus`` and save it (HF format) into ``out_dir``.

    Returns the ``PreTrainedTokenizerFast``. Deterministic for a given corpus and size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    fast.padding_side = "left"
    fast.save_pretrained(str(out_dir))
    return fast


def split_pair(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) exactly as lm-eval's ``_encode_pair`` makes them."""
    n = len(prompt) - len(prompt.rstrip())
    if n:
        prompt, answer = prompt[:-n], prompt[-n:] + answer
    whole = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]
