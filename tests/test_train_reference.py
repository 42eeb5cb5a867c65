"""The built-in trainer's LoRA against a plain peft + torch AdamW loop (issue 17: rule out a
defect before blaming the defaults). benchmarks/train_lora_check.py's reference loop (sdpa
attention from packed position ids, peft's unfolded LoRA forward, non-fused AdamW, its own
warmup + cosine) on the tiny model: the trainer (folded LoRA, segment attention, fused AdamW)
must give the same loss at every step and the same adapter weights at the end."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_script
from test_train import cfg_for, examples, tiny_model, tok, write_run  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _check():
    return load_script(REPO / "benchmarks" / "train_lora_check.py", "train_lora_check")


@pytest.mark.parametrize("rslora,modules", [(False, []), (True, []), (False, ["embed_tokens"])])
def test_trainer_matches_plain_peft_adamw_loop(tiny_model, tok, tmp_path, rslora, modules):  # noqa: F811
    mod = _check()
    run = write_run(tmp_path / "run", tok, examples(40, 0), examples(8, 1))
    cfg = cfg_for(tiny_model, lr=3e-3, warmup=0.25, epochs=2, max_steps=6, eval_every=1000, use_rslora=rslora, modules_to_save=modules,
                  early_stopping={"patience": 0}, forgetting={"reference": "val_prompts"})
    ref, ref_w = mod.reference_losses(run, cfg, 6)
    ours, our_w, summary = mod.trainer_losses(run, cfg)
    assert len(ours) == len(ref) == 6  # both trained as long
    assert max(float(t.abs().max()) for k, t in our_w.items() if "lora_B" in k) > 1e-3  # B left 0: it trained
    for a, b in zip(ours, ref):
        assert abs(a - b) < 1e-4 * max(1.0, abs(b)), (ours, ref)
    assert mod.compare_weights(ref_w, our_w) < 1e-4
    assert summary["lrs"][0] < summary["lrs"][1]  # warmup ran: the lr rose over the first steps


def test_lora_gradients_and_what_trains(tiny_model, tok, tmp_path):  # noqa: F811
    mod = _check()
    run = write_run(tmp_path / "run", tok, examples(12, 0), examples(4, 1))
    cfg = cfg_for(tiny_model, forgetting={"reference": "val_prompts"}, modules_to_save=[])
    g = mod.gradient_check(run, cfg)
    assert g["tensors"] > 0 and g["max_rel_err_A"] < 1e-4 and g["max_rel_err_B"] < 1e-4
    w = mod.what_trains(cfg)
    assert w["scaling"] == [w["expected_scaling"]] == [2.0] and w["B_zero_at_init"] and w["dropout"] == ["Identity"]
    assert w["all_in_optimizer"] and w["trainable_not_lora"] == [] and w["tied_embeddings"]
    assert w["lr_first_steps"] == pytest.approx(w["lr_expected"])
