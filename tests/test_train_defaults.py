"""The size-aware LoRA defaults (issue 17; TrainConfig.resolved): on a small model an unset lr
is 1e-3 and the input embeddings (with a tied head) train beside the adapter; on a large one
the defaults stay lr 2e-4 and the adapter alone; explicit keys always win. And LoRA+ groups."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from curate.contract.typed_config import ConfigError
from test_train import examples, quiet, tiny_model, tok, write_run  # noqa: F401
from train.config import SMALL_MODEL_PARAMS, parse_train_config


def _cfg(model, **kw):
    base = dict(base_model=str(model), batch_tokens=256, micro_batch_tokens=128, eval_every=1000, save_every=0,
                max_steps=3, r=4, alpha=8.0, early_stopping={"patience": 0}, forgetting={"reference": "val_prompts"})
    return parse_train_config({**base, **kw}, Path("/"))


def test_defaults_resolve_by_model_size_and_explicit_keys_win(tiny_model):  # noqa: F811
    c = _cfg(tiny_model)
    small, large = c.resolved(260_032, "embed_tokens"), c.resolved(7_000_000_000, "embed_tokens")
    assert (small.lr, small.modules_to_save) == (1e-3, ["embed_tokens"])
    assert (large.lr, large.modules_to_save) == (2e-4, [])
    assert c.lr is None and c.modules_to_save == "auto"  # resolved() copies
    mine = _cfg(tiny_model, lr=5e-4, modules_to_save=[]).resolved(1000, "embed_tokens")
    assert (mine.lr, mine.modules_to_save) == (5e-4, [])
    full = _cfg(tiny_model, method="full").resolved(1000, "embed_tokens")
    assert (full.lr, full.modules_to_save) == (1e-5, [])
    ia3 = _cfg(tiny_model, method="ia3").resolved(1000, "embed_tokens")
    assert (ia3.lr, ia3.modules_to_save) == (2e-4, [])
    assert _cfg(tiny_model).resolved(SMALL_MODEL_PARAMS, "embed_tokens").lr == 2e-4
    for extra, key in [({"modules_to_save": "all"}, "train.modules_to_save"),
                       ({"method": "full", "modules_to_save": ["embed_tokens"]}, "train.modules_to_save"),
                       ({"lora_plus_ratio": 0.0}, "train.lora_plus_ratio"),
                       ({"method": "full", "lora_plus_ratio": 16.0}, "train.lora_plus_ratio")]:
        with pytest.raises(ConfigError) as err:
            _cfg(tiny_model, **extra)
        assert err.value.key == key, (extra, err.value)


@pytest.mark.parametrize("modules", ["auto", []])
def test_small_model_default_trains_tied_embeddings_and_exports_them(tiny_model, tok, tmp_path, modules):  # noqa: F811
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from train import run_training

    run = write_run(tmp_path / "run", tok, examples(24, 0), examples(6, 1))
    msgs = []
    s = run_training(run, _cfg(tiny_model, modules_to_save=modules), log=msgs.append)
    want = ["embed_tokens"] if modules == "auto" else []
    assert s["lr"] == 1e-3 and s["modules_to_save"] == want and s["base_parameters"] < SMALL_MODEL_PARAMS
    assert any("small model" in m for m in msgs)
    prov = json.loads((run / "train" / "provenance.json").read_text())
    assert prov["config"]["lr"] == 1e-3 and prov["config"]["modules_to_save"] == want  # the card says what trained
    saved = load_file(str(run / "train" / "adapter" / "adapter_model.safetensors"))
    assert any("embed_tokens" in k for k in saved) == bool(want)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ref = base.get_input_embeddings().weight.detach().clone()
    tuned = PeftModel.from_pretrained(base, run / "train" / "adapter").eval()
    merged = tuned.merge_and_unload()
    emb, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert torch.equal(emb, head)  # the output head still is the (trained) input embedding
    assert (not torch.equal(emb, ref)) == bool(want)


def test_lora_plus_puts_lora_b_in_its_own_scheduled_group(tiny_model):  # noqa: F811
    from train.loop import lr_lambda, make_optimizer
    from train.model import load_base, trainable, wrap

    cfg = _cfg(tiny_model, lr=1e-3, lora_plus_ratio=16.0, warmup=2, modules_to_save=[])
    model, _ = load_base(cfg, torch.device("cpu"), torch.float32)
    params = trainable(wrap(model, cfg))
    opt = make_optimizer(cfg, params)
    a, b = opt.param_groups
    assert len(b["params"]) == sum(".lora_B." in n for n in params) > 0 and len(a["params"]) + len(b["params"]) == len(params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, 10))
    for _ in range(3):
        assert b["lr"] == pytest.approx(16 * a["lr"])
        opt.step()
        sched.step()
    assert a["lr"] == pytest.approx(1e-3 * lr_lambda(cfg, 10)(3))
