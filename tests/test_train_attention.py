"""train/attention.py's explicit causal kernel (small head dims on CPU) against SDPA's flash
kernel per example and against a dense float64 reference: same outputs and gradients, with
padding, several examples per row, one-token examples and examples longer than a query block."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import train.attention as attention
from test_train import cfg_for, examples, tiny_model, tok, write_run  # noqa: F401
from train.data import load_split, make_batch, read_manifest

# (row, start, length): row 0 holds three examples and two padding positions; row 1 one example
# longer than two query blocks of 16, a one-token example, then padding
SEGMENTS = ((0, 0, 20), (0, 20, 33), (0, 53, 15), (1, 0, 41), (1, 41, 1))
B, H, L, D = 2, 4, 70, 8


def qkv(dtype=torch.float32):
    """q, k, v laid out as transformers leaves them: [B, L, H, D] in memory, [B, H, L, D] views."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, L, H, D, generator=g, dtype=dtype).transpose(1, 2).requires_grad_() for _ in range(3)]


def dense_reference(q, k, v, segments):
    """Block-diagonal causal softmax attention over whole rows, [B, L, H, D], zeros at padding."""
    mask = torch.full((B, L, L), float("-inf"), dtype=q.dtype)
    real = torch.zeros(B, L, dtype=torch.bool)
    for r, s, n in segments:
        mask[r, s : s + n, s : s + n] = torch.zeros(n, n, dtype=q.dtype).masked_fill_(
            torch.ones(n, n, dtype=torch.bool).triu_(1), float("-inf"))
        real[r, s : s + n] = True
    mask[~real] = 0.0  # padding rows: anything finite (their output is zeroed below)
    p = torch.softmax(q @ k.transpose(-1, -2) * D**-0.5 + mask[:, None], -1)
    return (p @ v).transpose(1, 2) * real[:, :, None, None]


def run(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), gq, gk, gv


def lora_model(model_dir):
    """The tiny model with the segment attention, in a LoRA with non-zero B (so adapters matter)."""
    from train.model import load_base, wrap

    cfg = cfg_for(model_dir, attn_implementation="segments")
    torch.manual_seed(0)
    model, _ = load_base(cfg, torch.device("cpu"), torch.float32)
    model = wrap(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(n)))
    return model


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(attention, "MATH_CHUNK", 16)


def test_explicit_kernel_equals_dense_reference_float64(small_blocks):
    q, k, v = qkv(torch.float64)
    grad_out = torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = run(lambda *t: attention._SegmentMath.apply(*t, SEGMENTS, D**-0.5), q, k, v, grad_out)
    want = run(lambda *t: dense_reference(*t, SEGMENTS), q, k, v, grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert got[0][0, 68:].abs().max() == 0 and got[1][:, :, 68:].abs().max() == 0  # padding: zero out, zero grad


def test_explicit_kernel_equals_flash_per_segment(small_blocks, monkeypatch):
    q, k, v = qkv()
    grad_out = torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(2))
    got = run(lambda *t: attention._SegmentMath.apply(*t, SEGMENTS, D**-0.5), q, k, v, grad_out)
    want = run(lambda *t: attention._flash_segments(*t, SEGMENTS, 0.0, None), q, k, v, grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    kept = []
    forward = attention._SegmentMath.forward

    def spy(ctx, *args):
        out = forward(ctx, *args)
        kept.append(len(ctx.saved))
        return out

    monkeypatch.setattr(attention._SegmentMath, "forward", staticmethod(spy))
    with torch.no_grad():  # eval: the same output, no probabilities kept for a backward
        out, _ = attention.segment_attention(None, q, k, v, None, curate_segments=SEGMENTS)
    torch.testing.assert_close(out, got[0])
    assert kept == [0]


def test_model_explicit_kernel_equals_flash_kernel(tiny_model, tok, tmp_path, monkeypatch):  # noqa: F811
    """The tiny Llama (head_dim 8, GQA 4/2) trained through `token_logits`: the explicit kernel,
    the flash kernel, and a mix of both in one batch (long examples to flash) give the same
    logits, loss and LoRA gradients."""
    from train.loop import token_logits

    run_dir = write_run(tmp_path / "r", tok, examples(16, 7), examples(2, 8), packed=True, row_tokens=80)
    split = load_split(run_dir, "train", read_manifest(run_dir))
    b = make_batch(split, np.arange(min(4, split.n_rows)), pad_id=0)
    lengths = sorted(n for _, _, n in b.segments)
    assert max(np.diff(split.row_ptr)[:4]) > 1 and lengths[0] < lengths[-1]
    monkeypatch.setattr(attention, "MATH_CHUNK", 8)  # several query blocks per example
    out = {}
    for kernel, max_dim, max_len in (("explicit", 16, 1024), ("flash", 0, 1024), ("mixed", 16, lengths[len(lengths) // 2])):
        monkeypatch.setattr(attention, "MATH_MAX_HEAD_DIM", max_dim)
        monkeypatch.setattr(attention, "MATH_MAX_LEN", max_len)
        model = lora_model(tiny_model)
        logits = token_logits(model, b)
        loss = torch.nn.functional.cross_entropy(logits, b.targets, reduction="sum") / len(b.targets)
        loss.backward()
        out[kernel] = (logits.detach(), loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for kernel in ("explicit", "mixed"):
        logits, loss, grads = out[kernel]
        torch.testing.assert_close(logits, out["flash"][0], atol=1e-5, rtol=1e-5)
        assert abs(loss - out["flash"][1]) < 1e-6 and grads.keys() == out["flash"][2].keys() and grads
        for n, g in grads.items():
            torch.testing.assert_close(g, out["flash"][2][n], atol=1e-5, rtol=1e-4)


def test_folded_lora_equals_peft_forward(tiny_model, tok, tmp_path, monkeypatch):  # noqa: F811
    """train/model.py folds a small LoRA's update into the weight (x (W + s B A)^T): the same
    logits, loss and LoRA gradients as peft's x W^T + s (x A^T) B^T; with the adapter disabled
    (the KL term, the forgetting monitor) it is the base model."""
    from peft.tuners.lora import layer as lora_layer

    import train.model
    from train.loop import token_logits

    run_dir = write_run(tmp_path / "r", tok, examples(12, 9), examples(2, 10), packed=True)
    split = load_split(run_dir, "train", read_manifest(run_dir))
    b = make_batch(split, np.arange(min(3, split.n_rows)), pad_id=0)
    out = {}
    for fold in (True, False):
        monkeypatch.setattr(train.model, "FOLD_MAX_WEIGHT", 65536 if fold else 0)
        model = lora_model(tiny_model)
        layers = [m for m in model.modules() if type(m) is lora_layer.Linear]
        assert layers and all(("forward" in vars(m)) == fold for m in layers)
        logits = token_logits(model, b)
        loss = torch.nn.functional.cross_entropy(logits, b.targets, reduction="sum") / len(b.targets)
        loss.backward()
        with torch.no_grad(), model.disable_adapter():
            base = token_logits(model, b)
        out[fold] = (logits.detach(), loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                     base)
    (l1, v1, g1, b1), (l2, v2, g2, b2) = out[True], out[False]
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b1, b2, atol=0, rtol=0)
    assert not torch.allclose(l1, b1)  # the adapter really changes the logits
    assert abs(v1 - v2) < 1e-6 and g1.keys() == g2.keys() and g1
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-5, rtol=1e-4)
