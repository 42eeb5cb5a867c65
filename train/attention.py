"""Attention over packed rows, one causal block per example (the trainer's hot path on CPU).

A packed row holds several examples that must not attend to each other. transformers turns
the restarting `position_ids` into a dense [L, L] block-diagonal mask and SDPA then runs the
masked kernel over the whole row. With stories260K (head_dim 8, rows of ~500 tokens) that was
about two thirds of the whole training step (docs/training-performance.md).

`segment_attention` instead calls SDPA once per example, on that example's slice of the row,
with `is_causal=True` and no mask: the cost is sum(l_i^2 / 2) instead of L^2, and the fast
unmasked kernel runs. Padding segments are skipped (their outputs are zeros; nothing reads
them: their labels are -100 and no real token attends to them). The result equals the
masked computation to float rounding (tests/test_train.py checks it).

How it is wired: `register()` adds the implementation "curate_segments" to transformers'
attention registry; its mask function is SDPA's own, so a caller that passes no segments
(generation, the forgetting monitor, another tool loading the model) gets plain masked SDPA,
exactly as with `attn_implementation = "sdpa"`. The trainer passes `curate_segments` (a tuple
of (row, start, length) per example, built with the batch in numpy: no host sync) through
the model's forward kwargs, which transformers hands to every attention call, inside
`passing_segments()`, which makes the mask function return None: transformers' dense [B, L, L]
mask (2-5 ms per forward of one 512-token row here) is then not built at all.

Trade-offs: one SDPA call per example per layer, so a micro-batch of hundreds of very short
examples pays Python overhead per call (still linear, and cheap next to an L^2 mask); the
mask is skipped through a context variable, since transformers' mask functions never see the
forward's kwargs, so a forward that passes segments must run inside `passing_segments()`
(train.loop.token_logits does). On a GPU with flash-attention installed,
`attn_implementation = "flash_attention_2"` with cu_seqlens does the same in one kernel."""
from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F

NAME = "curate_segments"
_PASSING = contextvars.ContextVar("curate_segments_passing", default=False)


def segment_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                      dropout: float = 0.0, scaling: float | None = None, curate_segments=None, **kwargs):
    """transformers attention interface: query [B, H, L, D], key/value [B, Hkv, L, D] ->
    ([B, L, H, D], None). Without `curate_segments`, plain SDPA with the given mask."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if curate_segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # CPU's flash kernel takes no enable_gqa (it would fall back to the math path)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    b, h, length, d = query.shape
    rows: list[list[torch.Tensor]] = [[] for _ in range(b)]
    ends = [0] * b
    for r, start, n in curate_segments:
        if start > ends[r]:
            rows[r].append(query.new_zeros(h, start - ends[r], value.shape[-1]))
        sl = slice(start, start + n)
        rows[r].append(F.scaled_dot_product_attention(query[r : r + 1, :, sl], key[r : r + 1, :, sl], value[r : r + 1, :, sl],
                                                      dropout_p=dropout, scale=scaling, is_causal=True)[0])
        ends[r] = start + n
    for r in range(b):
        if ends[r] < length:
            rows[r].append(query.new_zeros(h, length - ends[r], value.shape[-1]))
    out = torch.stack([x[0] if len(x) == 1 else torch.cat(x, 1) for x in rows])
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def passing_segments():
    """Around a forward that passes `curate_segments`: the dense mask is not built (nothing
    would read it)."""
    token = _PASSING.set(True)
    try:
        yield
    finally:
        _PASSING.reset(token)


def segment_mask(*args, **kwargs):
    """SDPA's mask, or None inside `passing_segments()`."""
    from transformers.masking_utils import sdpa_mask

    return None if _PASSING.get() else sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make "curate_segments" a transformers attention implementation (idempotent); its
    name, for `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, segment_attention)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, segment_mask)
    return NAME


def uses_segments(model) -> bool:
    """Whether `model` runs the segment attention (so its forward takes `curate_segments`)."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_attn_implementation", None) == NAME
