"""Attention over packed rows, one causal block per example (the trainer's hot path on CPU).

A packed row holds several examples that must not attend to each other. transformers turns
the restarting `position_ids` into a dense [L, L] block-diagonal mask and SDPA then runs the
masked kernel over the whole row. With stories260K (head_dim 8, rows of ~500 tokens) that was
about two thirds of the whole training step (docs/training-performance.md).

`segment_attention` instead attends within each example, on that example's slice of the row,
causally and with no mask: the cost is sum(l_i^2 / 2) instead of L^2. Padding segments are
skipped (their outputs are zeros; nothing reads them: their labels are -100 and no real token
attends to them). The result equals the masked computation to float rounding
(tests/test_train.py, tests/test_train_attention.py check it). Two kernels do the work:

- the explicit kernel (`_SegmentMath`, CPU, fp32/fp64, head_dim <= MATH_MAX_HEAD_DIM, examples
  of <= MATH_MAX_LEN tokens): matmuls and a softmax with its own backward, over blocks of
  MATH_CHUNK query rows, each against only the keys up to its last query (causal blocks skip
  the rest). Every matmul puts head_dim on the small outer side (O^T = V^T P^T), which MKL runs
  ~4x faster than the [n, n] x [n, d] form. At head_dim 8 SDPA's CPU flash kernel (one call per
  example) spends most of its time outside its tiny d=8 GEMMs; this kernel's forward + backward
  takes about half as long (the stories260K step: 108 -> 61 ms CPU). It keeps the softmax
  probabilities for the backward instead of recomputing them (recomputing was slower than the
  flash kernel): about heads x l^2 / 2 floats per example and layer (4 MB at 8 heads and 512
  tokens; +46 MB peak on the benchmark), hence the length cap.
- otherwise SDPA's causal flash kernel once per example (`_flash_segments`), as before. At
  head_dim 16 both kernels measured about equal, at 32-64 the explicit one no better while
  its memory grows, and on a GPU the fused kernels win: they keep the flash path.

How it is wired: `register()` adds the implementation "curate_segments" to transformers'
attention registry; its mask function is SDPA's own, so a caller that passes no segments
(generation, the forgetting monitor, another tool loading the model) gets plain masked SDPA,
exactly as with `attn_implementation = "sdpa"`. The trainer passes `curate_segments` (a tuple
of (row, start, length) per example, built with the batch in numpy: no host sync) through
the model's forward kwargs, which transformers hands to every attention call, inside
`passing_segments()`, which makes the mask function return None: transformers' dense [B, L, L]
mask (2-5 ms per forward of one 512-token row here) is then not built at all.

Trade-offs: a few kernel calls per example (and query block) per layer, so a micro-batch of
hundreds of very short examples pays Python overhead per call (still linear, and cheap next to an L^2 mask); the
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

# The explicit kernel runs on a segment when all of these hold (and the tensors are fp32/fp64
# on the CPU, without attention dropout); otherwise SDPA's flash kernel does, as before. Measured
# single-threaded (docs/training-performance.md): at head_dim 8 the explicit kernel's forward +
# backward takes about half the flash kernel's time, at 16 about the same, at 32-64 no less; its
# saved probabilities grow as length^2 (see the module docstring).
MATH_MAX_HEAD_DIM = 16
MATH_MAX_LEN = 1024
# query rows per block: a block skips the keys after its last query. Measured on the stories260K
# step: 64 and 128 equal, 256 +33%, one block per example (512) +75% (cache misses)
MATH_CHUNK = 128
_MATH_DTYPES = (torch.float32, torch.float64)
_MASKS: dict = {}


def _causal_mask(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[n, n] additive causal mask (0 on and below the diagonal, -inf above), a view of one
    cached square per dtype and device that only ever grows (to the longest segment seen)."""
    key = (dtype, device)
    m = _MASKS.get(key)
    if m is None or m.shape[0] < n:
        size = max(n, 512 if m is None else 2 * m.shape[0])
        m = torch.full((size, size), float("-inf"), dtype=dtype, device=device).triu_(1)
        _MASKS[key] = m
    return m[:n, :n]


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    """[a, b) query blocks of near-equal length <= size covering 0..n."""
    k = max(1, -(-n // size))
    edges = [n * i // k for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


class _SegmentMath(torch.autograd.Function):
    """Causal attention of each (row, start, length) segment by explicit matmuls and softmax,
    forward and backward, in one autograd node for the whole batch.

    q, k, v: [B, H, L, D] (k, v already repeated to H heads); output [B, L, H, D] with zeros
    outside the segments. Per segment and query block [a, b): P = softmax(q k^T * scale +
    causal mask) over keys [0, b) only, O = P v. P is kept for the backward (no recompute):
    dV = P^T dO, dP = dO v^T, dS = P * (dP - rowsum(dO * O)), dQ = dS k * scale, dK = dS^T q *
    scale. Every matmul is written with the head_dim side (8 here) as the small OUTER dimension
    (O^T = v^T P^T and so on): MKL runs [D, n] x [n, m] about 4x faster than [m, n] x [n, D]."""

    @staticmethod
    def forward(ctx, q, k, v, segments, scale, grad_enabled=True):
        b_, h, length, d = q.shape
        out = q.new_zeros(b_, length, h, d)
        # the caller's grad mode (forward runs with grad off): eval under no_grad keeps nothing
        keep = grad_enabled and any(ctx.needs_input_grad[:3])
        saved = []
        for r, s, n in segments:
            mask = _causal_mask(n, q.dtype, q.device)
            ks, vs = k[r, :, s : s + n], v[r, :, s : s + n]
            for a, e in _blocks(n, MATH_CHUNK):
                p = torch.baddbmm(mask[a:e, :e], q[r, :, s + a : s + e], ks[:, :e].transpose(1, 2), alpha=scale)
                p = p.softmax(-1)
                ot = torch.bmm(vs[:, :e].transpose(1, 2), p.transpose(1, 2))  # [H, D, e - a]
                out[r, s + a : s + e] = ot.permute(2, 0, 1)
                if keep:
                    saved.append((p, ot))
        ctx.segments, ctx.scale, ctx.saved = segments, scale, saved
        ctx.save_for_backward(q, k, v)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        b_, h, length, d = q.shape
        dq = dout.new_zeros(b_, length, h, d)
        dk, dv = dout.new_zeros(b_, length, h, d), dout.new_zeros(b_, length, h, d)
        saved = iter(ctx.saved)
        for r, s, n in ctx.segments:
            ks, vs = k[r, :, s : s + n], v[r, :, s : s + n]
            dkt, dvt = dout.new_zeros(h, d, n), dout.new_zeros(h, d, n)
            for a, e in _blocks(n, MATH_CHUNK):
                p, ot = next(saved)
                dot = dout[r, s + a : s + e].permute(1, 2, 0)  # [H, D, m]
                dvt[:, :, :e].baddbmm_(dot, p)
                ds = torch.bmm(dot.transpose(1, 2), vs[:, :e].transpose(1, 2))  # dP, [H, m, e]
                ds.sub_((dot * ot).sum(1).unsqueeze(-1)).mul_(p)
                dq[r, s + a : s + e] = torch.bmm(ks[:, :e].transpose(1, 2), ds.transpose(1, 2)).permute(2, 0, 1)
                dkt[:, :, :e].baddbmm_(q[r, :, s + a : s + e].transpose(1, 2), ds)
            dk[r, s : s + n] = dkt.permute(2, 0, 1)
            dv[r, s : s + n] = dvt.permute(2, 0, 1)
        ctx.saved = None
        return dq.mul_(ctx.scale).transpose(1, 2), dk.mul_(ctx.scale).transpose(1, 2), dv.transpose(1, 2), None, None, None


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
    d = query.shape[-1]
    math_ok = (query.device.type == "cpu" and query.dtype in _MATH_DTYPES and d <= MATH_MAX_HEAD_DIM
               and value.shape[-1] == d and not dropout)
    math = tuple(x for x in curate_segments if math_ok and x[2] <= MATH_MAX_LEN)
    flash = tuple(x for x in curate_segments if not (math_ok and x[2] <= MATH_MAX_LEN))
    out = _SegmentMath.apply(query, key, value, math, scaling if scaling is not None else d ** -0.5,
                             torch.is_grad_enabled()) if math else None
    if flash or out is None:
        rest = _flash_segments(query, key, value, flash, dropout, scaling)
        out = rest if out is None else out + rest
    return out, None


def _flash_segments(query, key, value, segments, dropout, scaling) -> torch.Tensor:
    """SDPA's causal (flash) kernel once per segment; [B, L, H, D], zeros outside the segments."""
    b, h, length, d = query.shape
    rows: list[list[torch.Tensor]] = [[] for _ in range(b)]
    ends = [0] * b
    for r, start, n in sorted(segments):
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
    return out.transpose(1, 2).contiguous()


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
