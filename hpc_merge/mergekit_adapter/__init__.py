"""The one thin layer between hpc_merge and mergekit (0.1.5 line).

Everything mergekit-specific lives here: the recipe schema check (mergekit silently ignores
unknown keys and reports most errors late, in mixed exception types), translation of our recipe
into a ``MergeConfiguration``, ``MergeOptions``, in-process execution with progress, and the
workarounds for known mergekit bugs (see ``../shared/notes/mergekit-facts.md``):

- arbitrary tokenizer/config donor without a base model  -> deterministic donor (base, else first);
- passthrough changing the layer count leaves ``layer_types`` stale -> rebuilt;
- process-wide loader cache reads rewritten inputs stale  -> cleared before every merge;
- weights written 0600                                     -> fixed by ``atomic_dir``;
- TIES trims with a full argsort per tensor (slow on CPU, ties kept arbitrarily) -> exact-k O(n)
  trim, ties broken by lowest index (``job.options.sparsify: fast``, the default; ``trim.py``);
- mergekit's architecture tables name tensors transformers 5 does not write (Cohere without
  qk-norm, GPT-NeoX mask buffers) or lack a depth key (Qwen2-MoE) -> fixed, and what still cannot
  merge correctly is refused at validation (``archfix.py``, ``archsupport.py``: the architecture matrix);
- every input shard stays memory-mapped, so all its touched pages count in RSS -> read with
  ``pread`` into memory freed with the tensor (``reader.py``).

Every runtime patch of mergekit (the workarounds above, the trim, the draws, the reader, the
streamed writer, chunking, a split part's restriction, progress) is in ``patches.py``, applied by
one context manager, ``mergekit_patches``, around every merge: on disk, chunked, split, in memory.

Before mergekit is first imported, ``lazy_peft.install()`` defers its module-level ``import peft``
(about 0.2 s of start-up, measured) to the one place mergekit uses it: a LoRA model reference.
"""

from hpc_merge.mergekit_adapter import lazy_peft

lazy_peft.install()

from hpc_merge.mergekit_adapter.archfix import architecture_info  # noqa: E402
from hpc_merge.mergekit_adapter.archsupport import SUPPORT, check_support  # noqa: E402
from hpc_merge.mergekit_adapter.execute import copy_tokenizer_files, donor_has_tokenizer, run_mergekit  # noqa: E402
from hpc_merge.mergekit_adapter.layerfix import fix_output_config  # noqa: E402
from hpc_merge.mergekit_adapter.options import merge_options  # noqa: E402
from hpc_merge.mergekit_adapter.recipe import (  # noqa: E402
    DTYPES,
    MODEL_KEYS,
    OWN_KEYS,
    RECIPE_KEYS,
    SLICE_KEYS,
    SOURCE_KEYS,
    check_recipe,
    method_specs,
)
from hpc_merge.mergekit_adapter.translate import model_refs, to_mergekit, validate_with_mergekit  # noqa: E402
from hpc_merge.mergekit_adapter.trim import SPARSIFY_MODES, exact_magnitude, sparsify_mode  # noqa: E402

__all__ = ["check_recipe", "to_mergekit", "run_mergekit", "merge_options", "method_specs", "model_refs",
           "donor_has_tokenizer", "copy_tokenizer_files", "validate_with_mergekit", "DTYPES", "MODEL_KEYS",
           "OWN_KEYS", "RECIPE_KEYS", "SLICE_KEYS", "SOURCE_KEYS", "SPARSIFY_MODES", "exact_magnitude",
           "sparsify_mode", "SUPPORT", "architecture_info", "check_support", "fix_output_config"]
