"""The trainer on tiny in-test models and hand-written shards (plus stories260K when present).

Shards are written here by a small fixture writer that follows the shard contract
(curate/render/shards.py): Arrow IPC streams with input_ids/labels (+ seq_lens/ids/tasks/sources
when packed) and a manifest carrying the tokenizer fingerprint. The synthetic tasks are
learnable (copy / reverse a prompt), so a falling loss means the model learned something."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from curate.contract.shards import tokenizer_fingerprint
from curate.contract.typed_config import ConfigError
from train.config import TrainConfig, parse_train_config
from train.data import DataError, load_split, make_batch, plan_epoch, read_manifest

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "sample_data" / "tokenizer"
STORIES = REPO.parent / "shared" / "data" / "models" / "stories260K"
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


# --------------------------------------------------------------------------- fixtures


def examples(n: int, seed: int = 0, lo: int = 10, hi: int = 60, bos: int = 1, eos: int = 2):
    """(id, task, input_ids, labels): prompt [bos, x..., sep] then the answer (copy or reverse)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        task = ("copy", "reverse")[i % 2]
        x = rng.integers(lo, hi, size=int(rng.integers(3, 9))).tolist()
        sep = 4 if task == "copy" else 5
        ans = (x if task == "copy" else x[::-1]) + [eos]
        ids = [bos, *x, sep, *ans]
        labels = [-100] * (len(x) + 2) + ans
        out.append((f"{task}-{seed}-{i}", task, ids, labels))
    return out


def write_run(run: Path, tok, train, val, packed: bool = True, row_tokens: int = 64, template: str = TEMPLATE) -> Path:
    """A run directory with shards and a manifest, as `curate run` leaves it."""
    from curate.contract.atomic import sha256_file

    manifest = {"render": {"template": "test", "template_text": template,
                           "template_sha256": __import__("hashlib").sha256(template.encode()).hexdigest(),
                           "tokenizer": {"path": "test", **tokenizer_fingerprint(tok)}},
                "shards": {}}
    for split, exs in (("train", train), ("val", val)):
        if packed:
            rows, cur = [], []
            for e in exs:
                if cur and sum(len(c[2]) for c in cur) + len(e[2]) > row_tokens:
                    rows.append(cur)
                    cur = []
                cur.append(e)
            if cur:
                rows.append(cur)
            table = pa.table({
                "input_ids": pa.array([[t for e in r for t in e[2]] for r in rows], pa.list_(pa.int32())),
                "labels": pa.array([[t for e in r for t in e[3]] for r in rows], pa.list_(pa.int32())),
                "seq_lens": pa.array([[len(e[2]) for e in r] for r in rows], pa.list_(pa.int32())),
                "ids": pa.array([[e[0] for e in r] for r in rows], pa.list_(pa.string())),
                "tasks": pa.array([[e[1] for e in r] for r in rows], pa.list_(pa.string())),
                "sources": pa.array([["s"] * len(r) for r in rows], pa.list_(pa.string()))})
        else:
            table = pa.table({"id": [e[0] for e in exs], "task": [e[1] for e in exs], "source": ["s"] * len(exs),
                              "input_ids": pa.array([e[2] for e in exs], pa.list_(pa.int32())),
                              "labels": pa.array([e[3] for e in exs], pa.list_(pa.int32()))})
        d = run / "shards" / split
        d.mkdir(parents=True, exist_ok=True)
        with pa.ipc.new_stream(str(d / "00000.arrow"), table.schema) as w:
            w.write_table(table)
        manifest["shards"][split] = [{"file": f"shards/{split}/00000.arrow", "rows": table.num_rows,
                                      "sha256": sha256_file(d / "00000.arrow")}]
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and far faster on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tok) -> Path:
    """A tiny random Llama on the sample tokenizer, saved like a real model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, initializer_range=0.2)  # wide enough logits to learn fast
    d = tmp_path_factory.mktemp("tiny_model")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def run_dir(tmp_path, tok) -> Path:
    return write_run(tmp_path / "run", tok, examples(48, 0), examples(12, 1))


def cfg_for(model: Path, **kw) -> TrainConfig:
    base = dict(base_model=str(model), batch_tokens=256, micro_batch_tokens=128, lr=3e-3, eval_every=4,
                save_every=0, warmup=0.0, r=4, alpha=8.0,
                forgetting={"samples": 2, "max_tokens": 96, "seq_len": 48})  # a small self-sampled reference
    base.update(kw)
    return parse_train_config(base, Path("/"))


def quiet(*_a, **_k):
    pass


def losses(out_dir: Path, kind="train", key="loss", adapter="default"):
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["kind"] == kind and r.get("adapter") == adapter and key in r]


# --------------------------------------------------------------------------- config


def test_config_defaults_and_refusals(tiny_model):
    c = parse_train_config({"base_model": str(tiny_model)}, Path("/"))
    assert c.learning_rate == 2e-4 and c.target_modules == "all-linear" and c.epochs == 1
    assert parse_train_config({"base_model": str(tiny_model), "method": "full"}, Path("/")).learning_rate == 1e-5
    rel = parse_train_config({"base_model": tiny_model.name}, tiny_model.parent)
    assert rel.base_model == str(tiny_model.resolve())
    cases = [({"lrr": 1e-4}, "train.lrr"), ({"lr": "fast"}, "train.lr"), ({"method": "qlora"}, "train.method"),
             ({"early_stopping": {"patience": -1}}, "train.early_stopping.patience"),
             ({"method": "full", "kl_to_base": 0.1}, "train.kl_to_base"),
             ({"l2_to_base": 0.1}, "train.l2_to_base"), ({"base_model": "/no/such/dir"}, "train.base_model"),
             ({"forgetting": {"reference": "missing.txt"}}, "train.forgetting.reference"),
             ({"threads": -1}, "train.threads")]
    for extra, key in cases:
        with pytest.raises(ConfigError) as err:
            parse_train_config({"base_model": str(tiny_model), **extra}, Path("/tmp"))
        assert err.value.key == key, (extra, err.value)
    with pytest.warns(UserWarning, match="epochs"):
        parse_train_config({"base_model": str(tiny_model), "epochs": 5}, Path("/"))


# --------------------------------------------------------------------------- data


def test_packed_rows_do_not_attend_across_examples(tiny_model, tok, tmp_path):
    """transformers 5: position-id restarts with no attention mask and use_cache=False give a
    block-diagonal mask; each packed example's logits equal those of the example alone."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    run = write_run(tmp_path / "r", tok, examples(8, 3), examples(2, 4), packed=True)
    split = load_split(run, "train", read_manifest(run))
    b = make_batch(split, np.array([0]))
    assert split.row_ptr[1] > 1  # the first row really packs several examples
    with torch.no_grad():
        packed = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits[0]
        start = 0
        for e in split.row_ex[split.row_ptr[0] : split.row_ptr[1]]:
            n = int(split.ex_len[e])
            alone = model(input_ids=b.input_ids[:, start : start + n], use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_packed_and_unpacked_give_same_loss(tiny_model, tok, tmp_path):
    from transformers import AutoModelForCausalLM
    from train.loop import token_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tr, va = examples(20, 5), examples(2, 6)
    totals = []
    for packed in (True, False):
        run = write_run(tmp_path / str(packed), tok, tr, va, packed=packed)
        split = load_split(run, "train", read_manifest(run))
        nll, n = 0.0, 0
        for step in plan_epoch(split, batch_tokens=10**9, micro_batch_tokens=96, seed=0, epoch=0):
            for mb in step:
                b = make_batch(split, mb, pad_id=tok.pad_token_id)
                with torch.no_grad():
                    nll += torch.nn.functional.cross_entropy(token_logits(model, b), b.targets, reduction="sum").item()
                n += len(b.targets)
        totals.append((nll / n, n))
    assert totals[0][1] == totals[1][1] == sum(sum(t != -100 for t in e[3]) for e in tr)
    assert abs(totals[0][0] - totals[1][0]) < 1e-5


def _lora(model_dir: Path, attn: str):
    """The tiny model under `attn`, wrapped in a LoRA with non-zero B (so adapters matter)."""
    from train.model import load_base, wrap

    cfg = cfg_for(model_dir, attn_implementation=attn)
    torch.manual_seed(0)
    model, _ = load_base(cfg, torch.device("cpu"), torch.float32)
    model = wrap(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(n)))
    return model


def test_segment_attention_equals_masked_sdpa(tiny_model, tok, tmp_path):
    """train/attention.py: SDPA per packed example (causal, no mask, padding skipped) gives the
    logits, loss and LoRA gradients of transformers' masked SDPA over the whole row; without
    segments (generation, the forgetting monitor) it is plain masked SDPA."""
    from train.attention import uses_segments
    from train.loop import token_logits

    run = write_run(tmp_path / "r", tok, examples(16, 7), examples(2, 8), packed=True, row_tokens=80)
    split = load_split(run, "train", read_manifest(run))
    rows = np.arange(min(4, split.n_rows))
    b = make_batch(split, rows, pad_id=0)
    assert max(np.diff(split.row_ptr)[rows]) > 1 and (b.position_ids[:, -1] == b.position_ids[:, -1].min()).any()
    assert sum(n for _, _, n in b.segments) == b.n_tokens  # every example, no padding segment
    out = {}
    for attn in ("sdpa", "segments"):
        model = _lora(tiny_model, attn)
        assert uses_segments(model) == (attn == "segments")
        logits = token_logits(model, b)
        loss = torch.nn.functional.cross_entropy(logits, b.targets, reduction="sum") / len(b.targets)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():  # no segments passed: the mask path
            plain = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        out[attn] = (logits.detach(), loss.item(), grads, plain)
    (l1, v1, g1, p1), (l2, v2, g2, p2) = out["sdpa"], out["segments"]
    torch.testing.assert_close(l2, l1, atol=1e-5, rtol=1e-5)
    assert abs(v1 - v2) < 1e-6 and g1.keys() == g2.keys() and len(g1) > 0
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p2, p1, atol=1e-6, rtol=1e-6)


def test_loss_at_supervised_positions_equals_full_logits_loss(tiny_model, tok, tmp_path):
    """token_logits keeps only the positions whose next token is supervised; the loss from
    them equals the loss from the full [B, L, vocab] logits with shifted labels (-100 ignored)."""
    from train.loop import token_logits

    run = write_run(tmp_path / "r", tok, examples(12, 9), examples(2, 10), packed=True)
    split = load_split(run, "train", read_manifest(run))
    b = make_batch(split, np.arange(min(3, split.n_rows)), pad_id=0)
    model = _lora(tiny_model, "segments").eval()
    with torch.no_grad():
        kept = torch.nn.functional.cross_entropy(token_logits(model, b), b.targets, reduction="sum")
        full = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits.double()
    # full-logits reference: label at t+1 unless padding, unsupervised, or the start of a new example
    labels = torch.full_like(b.input_ids, -100)
    labels[:, :-1] = torch.where(b.keep[:, :-1], b.input_ids[:, 1:], -100)
    ref = torch.nn.functional.cross_entropy(full[:, :-1].reshape(-1, full.shape[-1]), labels[:, :-1].reshape(-1),
                                            reduction="sum", ignore_index=-100)
    assert int((labels != -100).sum()) == len(b.targets)
    assert abs(kept.item() - ref.item()) / ref.item() < 1e-6


def test_same_seed_same_weights(tiny_model, tok, tmp_path):
    from safetensors.torch import load_file

    from train.loop import run_training

    weights = []
    for i in range(2):
        run = write_run(tmp_path / f"r{i}", tok, examples(24, 11), examples(4, 12))
        run_training(run, cfg_for(tiny_model, max_steps=3, eval_every=3), log=quiet)
        weights.append(load_file(run / "train" / "adapter" / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_plan_epoch_steps_never_exceed_batch_tokens(tok, tmp_path):
    """Regression: a step used to close only once it reached batch_tokens, so with
    batch_tokens == micro_batch_tokens and full packed rows every step took two
    micro-batches (twice the intended batch)."""
    run = write_run(tmp_path / "run", tok, examples(80, 3), examples(2, 4), row_tokens=64)
    split = load_split(run, "train", read_manifest(run))
    lengths = split.row_lengths()
    plan = plan_epoch(split, batch_tokens=64, micro_batch_tokens=64, seed=0, epoch=0)
    assert len(plan) > 5 and all(len(step) == 1 for step in plan)
    for bt in (100, 200, 500):
        plan = plan_epoch(split, batch_tokens=bt, micro_batch_tokens=64, seed=1, epoch=2)
        sizes = [sum(int(lengths[mb].sum()) for mb in step) for step in plan]
        assert all(s <= bt for s in sizes) and max(sizes) > bt // 2
        # greedy: each step but the last could not take the next step's first micro-batch
        assert all(s + int(lengths[nxt[0]].sum()) > bt for s, nxt in zip(sizes, plan[1:]))
        # every row exactly once, deterministic
        assert sorted(np.concatenate([mb for st in plan for mb in st]).tolist()) == list(range(split.n_rows))
        again = plan_epoch(split, batch_tokens=bt, micro_batch_tokens=64, seed=1, epoch=2)
        assert [[mb.tolist() for mb in st] for st in plan] == [[mb.tolist() for mb in st] for st in again]


def test_refuses_other_tokenizer_and_bad_masks(tiny_model, tok, tmp_path):
    from train import run_training

    run = write_run(tmp_path / "r", tok, examples(8), examples(2, 1))
    m = json.loads((run / "manifest.json").read_text())
    m["render"]["tokenizer"]["fingerprint"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="tokenizer mismatch"):
        run_training(run, cfg_for(tiny_model), log=quiet)
    bad = examples(8)
    bad[3] = (bad[3][0], bad[3][1], bad[3][2], bad[3][3][:-1] + [7])  # a label that is not the input token
    run2 = write_run(tmp_path / "r2", tok, bad, examples(2, 1))
    with pytest.raises(DataError, match="neither -100 nor the input token.*row"):
        run_training(run2, cfg_for(tiny_model), log=quiet)
    none = [(e[0], e[1], e[2], [-100] * len(e[2])) for e in examples(4)] + examples(4, 9)
    run3 = write_run(tmp_path / "r3", tok, none, examples(2, 1), packed=False)
    with pytest.raises(DataError, match="no supervised"):
        run_training(run3, cfg_for(tiny_model), log=quiet)


# --------------------------------------------------------------------------- training


def test_train_export_reload_merge(tiny_model, tok, run_dir):
    """Loss falls; step-0 KL is 0; the adapter reloads with peft and reproduces the trained
    logits; the merged model equals the adapter; outputs and provenance are written."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from train import run_training

    cfg = cfg_for(tiny_model, epochs=3, lr=3e-2, batch_tokens=64, merge=True, early_stopping={"patience": 0})
    s = run_training(run_dir, cfg, log=quiet)
    out = run_dir / "train"
    tl = [v for _, v in losses(out)]
    assert tl[-1] < tl[0] - 1.0, tl
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[0]["step"] == 0 and evals[0]["kl_to_base"] < 1e-9
    assert evals[-1]["kl_to_base"] > 1e-4 and set(evals[-1]["val_loss_by_task"]) == {"copy", "reverse"}
    assert s["best_val_loss"] < s["first_val_loss"]
    prov = json.loads((out / "provenance.json").read_text())
    assert set(prov["shards"]) == {"train/00000.arrow", "val/00000.arrow"} and prov["config"]["lr"] == 3e-2
    assert AutoTokenizer.from_pretrained(out / "adapter").chat_template == TEMPLATE

    split = load_split(run_dir, "val", read_manifest(run_dir))
    b = make_batch(split, np.arange(split.n_rows), pad_id=tok.pad_token_id)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        a = peft_model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        m = merged(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(a[b.keep], b.targets, reduction="none")
    torch.testing.assert_close(a, m, atol=1e-5, rtol=0)
    # the reloaded adapter gives the val loss the trainer recorded for its best step
    best = next(e for e in evals if e["step"] == s["best_step"])
    assert abs(nll.mean().item() - best["val_loss"]) < 1e-5


def test_resume_gives_identical_losses(tiny_model, tok, tmp_path, monkeypatch):
    """Killed mid-step (after the step-6 checkpoint), then resumed: the same losses as a run
    never interrupted; `stop_after` (a clean stop with a checkpoint) likewise."""
    import train.loop
    from train import run_training

    tr, va = examples(48, 0), examples(8, 1)
    a, b, c = (write_run(tmp_path / x, tok, tr, va) for x in "abc")
    cfg = cfg_for(tiny_model, epochs=2, dropout=0.1, save_every=3, eval_every=4, batch_tokens=96)
    real, calls, limit = train.loop.make_batch, [], [10**9]

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) > limit[0]:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train.loop, "make_batch", dying)
    run_training(a, cfg, log=quiet)
    limit[0], calls[:] = len(calls) * 2 // 3, []
    with pytest.raises(KeyboardInterrupt):
        run_training(b, cfg, log=quiet)
    monkeypatch.setattr(train.loop, "make_batch", real)
    latest = json.loads((b / "train" / "checkpoints" / "default" / "latest.json").read_text())
    assert latest["step"] >= 3
    run_training(b, cfg, log=quiet, resume=True)
    assert run_training(c, cfg, log=quiet, stop_after=5)["interrupted"]
    run_training(c, cfg, log=quiet, resume=True)
    la = losses(a / "train")
    assert len(la) >= 10
    for other in (b, c):
        lb = losses(other / "train")
        assert [s for s, _ in la] == [s for s, _ in lb]
        assert max(abs(x - y) for (_, x), (_, y) in zip(la, lb)) < 1e-6
        ea, eb = losses(a / "train", "eval", "val_loss"), losses(other / "train", "eval", "val_loss")
        assert [s for s, _ in ea] == [s for s, _ in eb] and [v for _, v in ea] == pytest.approx([v for _, v in eb], abs=1e-6)


def test_early_stopping_keeps_best(tiny_model, tok, run_dir):
    """No evaluation can beat step 0 by min_delta = 10: the run stops after `patience`
    evaluations and exports the step-0 weights (a zero LoRA update: KL 0 to base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from train import run_training

    cfg = cfg_for(tiny_model, epochs=3, eval_every=2, early_stopping={"patience": 2, "min_delta": 10.0})
    s = run_training(run_dir, cfg, log=quiet)
    assert s["stopped_early"] and s["steps"] == 4 and s["best_step"] == 0 and s["steps"] < s["total_steps"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run_dir / "train" / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().max()) == 0.0 for p in lora_b)


def test_early_stopped_summary_measures_the_exported_weights(tiny_model, tok, run_dir):
    """With early stopping the summary's KL, reference loss and per-task val loss are
    those of the restored best weights that get exported, not of the last evaluation's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from train import run_training
    from train.export import base_reference
    from train.forgetting import ForgettingMonitor, self_sample_split

    cfg = cfg_for(tiny_model, epochs=3, lr=3e-2, eval_every=2, early_stopping={"patience": 2, "min_delta": 10.0})
    s = run_training(run_dir, cfg, log=quiet)
    out = run_dir / "train"
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x][-1]
    assert s["stopped_early"] and s["best_step"] == 0 and last["step"] == s["steps"] and last["kl_to_base"] > 1e-4

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter").eval()
    f = cfg.forgetting  # the cached self-sample reference the run measured on
    ref = self_sample_split(model, tok, json.dumps(base_reference(cfg.base_model), sort_keys=True), f.samples,
                            f.max_tokens, f.seq_len, f.temperature, f.seed, "cpu", out / "reference")
    kl, nll, _, n = ForgettingMonitor(model, ref, cfg.micro_batch_tokens, "cpu", True).measure(model).tolist()
    assert s["kl_to_base"] == pytest.approx(kl / n, abs=1e-7) and s["kl_to_base"] < 1e-9
    assert s["ref_loss_after"] == pytest.approx(nll / n, abs=1e-6) == pytest.approx(s["ref_loss_before"], abs=1e-6)
    split = load_split(run_dir, "val", read_manifest(run_dir))
    b = make_batch(split, np.arange(split.n_rows), pad_id=tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits[b.keep]
    nll_tok = torch.nn.functional.cross_entropy(logits, b.targets, reduction="none")
    task = b.target_task.numpy()
    for i, t in enumerate(split.tasks):
        assert s["val_loss_by_task"][t] == pytest.approx(float(nll_tok[task == i].mean()), abs=1e-5)


def test_early_stop_in_the_first_quarter_warns(tiny_model, run_dir):
    """Early stopping far before the planned steps says so (the frontier benchmark saw it
    end LoRA at step 70 of 581, long before the task was learned)."""
    from train import run_training

    logs: list[str] = []
    cfg = cfg_for(tiny_model, epochs=20, lr=3e-2, eval_every=2, early_stopping={"patience": 1, "min_delta": 10.0})
    s = run_training(run_dir, cfg, log=logs.append)
    assert s["stopped_early"] and s["steps"] < 0.25 * s["total_steps"], s
    warn = [m for m in logs if "warning: early stopping ended the run after" in m]
    assert len(warn) == 1 and f"{s['steps']} of {s['total_steps']} steps" in warn[0] and "patience = 0" in warn[0]


def test_kl_to_base_grows_with_learning_rate(tiny_model, tok, tmp_path):
    from train import run_training

    kls = []
    for lr in (1e-4, 3e-3, 3e-2):
        run = write_run(tmp_path / f"lr{lr}", tok, examples(24, 0), examples(8, 1))
        s = run_training(run, cfg_for(tiny_model, lr=lr, max_steps=3, eval_every=3), log=quiet)
        kls.append(s["kl_to_base"])
    assert 0 < kls[0] < kls[1] < kls[2], kls


def test_reference_text_and_kl_regulariser(tiny_model, tok, tmp_path):
    """A general-text reference file feeds the monitor; kl_to_base pulls the model back."""
    from train import run_training

    ref = tmp_path / "ref.txt"
    ref.write_text("Once upon a time there was a cat.\n\nThe sun rises in the east.\n\nTom had a red ball.\n")
    out = {}
    for w in (0.0, 5.0):
        run = write_run(tmp_path / f"w{w}", tok, examples(24, 0), examples(8, 1))
        cfg = cfg_for(tiny_model, lr=3e-2, max_steps=3, eval_every=3, kl_to_base=w,
                      forgetting={"reference": str(ref), "seq_len": 16})
        out[w] = run_training(run, cfg, log=quiet)
        assert out[w]["ref_loss_before"] > 0
    assert out[5.0]["kl_to_base"] < out[0.0]["kl_to_base"]


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_other_adapter_methods(tiny_model, tok, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from train import run_training

    run = write_run(tmp_path / "r", tok, examples(16, 0), examples(4, 1))
    s = run_training(run, cfg_for(tiny_model, method=method, max_steps=2, eval_every=2, lr=1e-2), log=quiet)
    assert losses(run / "train", "eval", "kl_to_base")[-1][1] > 0  # the monitor sees the trained weights
    if s["best_step"] == 0:  # val did not improve: the step-0 weights are exported, and summarised
        assert s["kl_to_base"] < 1e-9
    else:
        assert s["kl_to_base"] > 0
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "train" / "adapter")


def test_full_finetune_with_l2(tiny_model, tok, tmp_path):
    from transformers import AutoModelForCausalLM
    from train import run_training

    run = write_run(tmp_path / "r", tok, examples(16, 0), examples(4, 1))
    s = run_training(run, cfg_for(tiny_model, method="full", max_steps=2, eval_every=2, lr=1e-3, l2_to_base=0.1), log=quiet)
    assert s["kl_to_base"] > 0  # against the cached base distribution
    AutoModelForCausalLM.from_pretrained(run / "train" / "model")


def test_per_task_adapters_load_together(tiny_model, tok, run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from train import run_training

    s = run_training(run_dir, cfg_for(tiny_model, adapters="per_task", max_steps=2, eval_every=2, lr=1e-2), log=quiet)
    assert set(s["adapters"]) == {"copy", "reverse"}
    d = run_dir / "train" / "adapters"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), d / "copy", adapter_name="copy")
    model.load_adapter(d / "reverse", adapter_name="reverse")
    x = torch.tensor([[1, 20, 21, 22, 5]])
    with torch.no_grad():
        model.set_adapter("copy")
        a = model(input_ids=x).logits
        model.set_adapter("reverse")
        b = model(input_ids=x).logits
    assert not torch.allclose(a, b)
    by_task = [r for r in (run_dir / "train" / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    assert {json.loads(r)["adapter"] for r in by_task} == {"copy", "reverse"}


def test_nonfinite_loss_names_step_and_batch(tmp_path, tok, tiny_model):
    from safetensors.torch import load_file, save_file
    from train import run_training
    from train.loop import TrainingError

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    w = load_file(str(broken / "model.safetensors"))
    key = next(k for k in w if "layers.0.mlp.down_proj" in k)
    w[key][0, 0] = float("nan")
    save_file(w, str(broken / "model.safetensors"), metadata={"format": "pt"})
    run = write_run(tmp_path / "r", tok, examples(8, 0), examples(2, 1))
    with pytest.raises(TrainingError, match=r"step 1 .*batch ids \['(copy|reverse)-0-"):
        run_training(run, cfg_for(tiny_model.__class__(broken)), log=quiet)


def _ddp_worker(rank: int, world: int, port: int, run: str, model: str, q) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from train import run_training

    s = run_training(Path(run), cfg_for(Path(model), max_steps=3, eval_every=3), log=quiet)
    q.put((rank, s["final_train_loss"], s["best_val_loss"]))


def test_ddp_two_processes_gloo_match_single(tiny_model, tok, tmp_path):
    """2 processes (gloo) on the same global batch give the same losses as one process."""
    import socket

    import torch.multiprocessing as mp
    from train import run_training

    tr, va = examples(32, 0), examples(8, 1)
    single = write_run(tmp_path / "single", tok, tr, va)
    ref = run_training(single, cfg_for(tiny_model, max_steps=3, eval_every=3), log=quiet)
    multi = write_run(tmp_path / "multi", tok, tr, va)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import of torch per process: the test stays short
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(multi), str(tiny_model), q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    got = sorted(q.get(timeout=5) for _ in range(2))
    for _, loss, val in got:
        assert abs(loss - ref["final_train_loss"]) < 1e-5 and abs(val - ref["best_val_loss"]) < 1e-5
    assert [v for _, v in losses(multi / "train")] == pytest.approx([v for _, v in losses(single / "train")], abs=1e-5)


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/data/models/stories260K not present")
def test_stories260k_loss_falls_and_monitor_measures(tmp_path):
    """A real pretrained model: the LoRA lowers its loss on instruction-style data, and the
    forgetting monitor sees its TinyStories-style reference loss move."""
    from transformers import AutoTokenizer
    from train import run_training

    tok = AutoTokenizer.from_pretrained(STORIES)
    pairs = [("What color is the sky?", "The sky is blue."), ("What does a cat say?", "A cat says meow."),
             ("Where do fish live?", "Fish live in the water."), ("What is big and gray?", "An elephant is big and gray."),
             ("Who likes to play?", "Tom likes to play with his ball."), ("What is hot?", "The sun is hot.")]

    def exs(rep, tag):
        out = []
        for i in range(rep):
            for j, (q, a) in enumerate(pairs):
                p = [tok.bos_token_id] + tok(f"Question: {q} Answer:", add_special_tokens=False).input_ids
                r = tok(f" {a}", add_special_tokens=False).input_ids + [tok.eos_token_id]
                out.append((f"{tag}{i}-{j}", "qa", p + r, [-100] * len(p) + r))
        return out

    run = write_run(tmp_path / "r", tok, exs(8, "t"), exs(1, "v"), row_tokens=128)
    ref = tmp_path / "ref.txt"
    ref.write_text("Once upon a time, there was a little girl named Lily. She loved to play outside.\n\n"
                   "One day, Tom went to the park with his mom. He saw a big red ball.\n")
    cfg = cfg_for(STORIES, lr=5e-3, epochs=2, eval_every=4, batch_tokens=512, micro_batch_tokens=512,
                  forgetting={"reference": str(ref), "seq_len": 64})
    s = run_training(run, cfg, log=quiet)
    tl = [v for _, v in losses(run / "train")]
    assert s["best_val_loss"] < s["first_val_loss"] * 0.7 and tl[-1] < tl[0]
    assert s["kl_to_base"] > 0 and s["ref_loss_after"] != pytest.approx(s["ref_loss_before"], abs=1e-6)


def test_cli_train_on_a_run_directory(tiny_model, tok, tmp_path):
    """`curate train RUN_DIR` takes [train] from the run's manifest; errors are one clean line."""
    from click.testing import CliRunner

    from curate.cli import main

    run = write_run(tmp_path / "r", tok, examples(16, 0), examples(4, 1))
    m = json.loads((run / "manifest.json").read_text())
    m["config"] = {"train": {"base_model": str(tiny_model), "max_steps": 2, "eval_every": 2, "batch_tokens": 128,
                             "micro_batch_tokens": 128, "r": 4}}
    (run / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["train", str(run), "--merge"])
    assert res.exit_code == 0, res.output
    assert (run / "train" / "adapter" / "adapter_config.json").is_file() and (run / "train" / "merged").is_dir()
    m["config"]["train"]["lr"] = "fast"
    (run / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["train", str(run)])
    assert res.exit_code != 0 and "train.lr" in res.output
