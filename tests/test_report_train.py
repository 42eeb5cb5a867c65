"""The report of a run with a train stage: the real trainer (train/) fits a LoRA adapter on
a tiny in-test Llama over the run's shards, and the report draws loss, val loss, val
loss per task and KL-to-base curves that agree with train/metrics.jsonl."""
from __future__ import annotations

import json
import re

import pytest

from curate.look.report import write_report
from test_report import TOKENIZER, build_run, summary


@pytest.fixture
def trainable(tmp_path):
    """(the trainer's loop module, a finished run with shards, `config(**keys)`: the
    [train] config of those keys over a tiny random Llama (seed 0) on the sample
    tokenizer, saved like a real model). Skips when the trainer or torch is not in this
    build."""
    train = pytest.importorskip("train.loop", reason="the trainer (train/) is not in this build")
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from train import parse_train_config

    run = build_run(tmp_path / "data")
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    def config(**keys):
        return parse_train_config({"base_model": str(model_dir), **keys}, tmp_path)

    return train, run, config


def test_report_with_train_stage(trainable):
    train, run, config = trainable
    cfg = config(max_steps=8, eval_every=2, batch_tokens=512, micro_batch_tokens=512, epochs=3, save_every=0,
                 warmup=0.0, r=4, alpha=8.0, lr=3e-3, device="cpu", kl_to_base=0.1)
    train.run_training(run, cfg, log=lambda *a, **k: None)
    rows = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert evals and any(r.get("kind") == "train" for r in rows)

    html = write_report(run).read_text(encoding="utf-8")
    s = summary(html)["sections"]["training"]
    assert s["status"] == "ok"
    d = s["data"]["default"]
    assert d["rows"] == len(rows)
    assert d["steps"] == max(r["step"] for r in rows)
    assert d["first_val_loss"] == pytest.approx(evals[0]["val_loss"])
    assert d["last_val_loss"] == pytest.approx(evals[-1]["val_loss"])
    assert d["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in evals))
    sec = re.search(r'<section id="training".*?</section>', html, re.S).group(0)
    titles = re.findall(r'<svg class="chart" data-kind="lines"[^>]*><title>([^<]*)</title>', sec)
    assert {"loss and val loss", "val loss per task", "KL to the base model", "learning rate"} <= set(titles)
    assert s["charts"] == len(titles)
    # every line chart drew its lines, named at their ends
    for t in ("loss", "val_loss", "kl_to_base", "qa", "dialogue"):
        assert f"<title>{t}</title></path>" in sec, t


def test_early_stop_warning_reaches_manifest_and_report(trainable):
    """An early stop in the first quarter of the planned steps is not only logged: the
    training summary (manifest `train`) carries the warning and the report shows it."""
    train, run, config = trainable
    # min_delta 10: no evaluation can count as an improvement, so patience 1 stops at the 2nd eval
    cfg = config(eval_every=2, batch_tokens=256, micro_batch_tokens=256, epochs=20, save_every=0, r=4, alpha=8.0,
                 lr=3e-3, device="cpu", early_stopping={"patience": 1, "min_delta": 10.0})
    logs: list[str] = []
    s = train.run_training(run, cfg, log=logs.append)
    assert s["stopped_early"] and s["steps"] < 0.25 * s["total_steps"], s
    assert len(s["warnings"]) == 1 and f"after {s['steps']} of {s['total_steps']} steps" in s["warnings"][0]
    assert [m for m in logs if "warning:" in m] == [f"[train] default: warning: {s['warnings'][0]}"]
    man = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    man["train"] = json.loads(json.dumps(s, default=str))  # what `curate train` / `curate run` record
    (run / "manifest.json").write_text(json.dumps(man), encoding="utf-8")
    html = write_report(run).read_text(encoding="utf-8")
    sec = re.search(r'<section id="training".*?</section>', html, re.S).group(0)
    assert f"after {s['steps']} of {s['total_steps']} steps" in sec and '<p class="warn">' in sec
    assert summary(html)["sections"]["training"]["data"]["warnings"] == s["warnings"]
    # a run that trained to the end has no warning
    assert train.early_stop_warning(s["total_steps"] // 2, s["total_steps"]) is None
