"""After training: path safety of names from data, checkpoint fingerprints, the template
and end-of-turn the exporter ships, `curate eval` against hand-computed numbers, `curate
chat` stopping at end-of-turn, the self-sampled forgetting reference (issues 15 and 17).

Tiny in-test Llama on the sample tokenizer (tests/test_train.py's fixtures)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import REPO, TEMPLATE, cfg_for, examples, quiet, write_run
from train.data import DataError

CHATML = (REPO / "templates" / "chat" / "chatml.jinja").read_text(encoding="utf-8")
IM_END = 5  # <|im_end|> in sample_data/tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO / "sample_data" / "tokenizer")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tok) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, initializer_range=0.2)
    d = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def set_render(run: Path, **render) -> None:
    m = json.loads((run / "manifest.json").read_text())
    m["render"].update(render)
    (run / "manifest.json").write_text(json.dumps(m))


def chatml_examples(tok, pairs, tag: str, task: str = "qa"):
    """Conversations rendered with the chatml template: prompt unsupervised, the answer and
    its <|im_end|> supervised (what the renderer writes)."""
    out = []
    for i, (q, a) in enumerate(pairs):
        prompt = tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False,
                                             chat_template=CHATML), add_special_tokens=False)["input_ids"]
        ans = tok(a, add_special_tokens=False)["input_ids"] + [IM_END]
        out.append((f"{tag}{i}", task, prompt + ans, [-100] * len(prompt) + ans))
    return out


def chatml_run(path: Path, tok, train, val) -> Path:
    run = write_run(path, tok, train, val, row_tokens=128, template=CHATML)
    set_render(run, template="chatml", end_of_turn={"text": "<|im_end|>", "ids": [IM_END]}, train_on="assistant")
    return run


# --------------------------------------------------------------------------- issue 15: paths


def test_task_names_from_data_never_become_paths(tiny, tok, tmp_path):
    """A Dolly category of '/some/dir' (and '../up') used to name checkpoint and adapter
    folders: the trainer wrote into that directory and the next run deleted its files."""
    from train import run_training
    from train.paths import safe_name

    victim = tmp_path / "some" / "dir"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep me")
    exs = examples(24, 0)
    names = {"copy": str(victim), "reverse": "../up"}
    exs = [(i, names[t], ids, lab) for i, t, ids, lab in exs]
    val = [(i, names[t], ids, lab) for i, t, ids, lab in examples(6, 1)]
    run = write_run(tmp_path / "run", tok, exs, val)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "run" not in p.parts)
    cfg = cfg_for(tiny, adapters="per_task", max_steps=2, eval_every=2, lr=1e-2, save_every=1)
    for _ in range(2):  # the second run is the one that used to delete
        s = run_training(run, cfg, log=quiet)
    assert (victim / "precious.txt").read_text() == "keep me"
    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "run" not in p.parts)
    assert after == before
    mapping = s["adapter_names"]
    assert set(mapping) == {str(victim), "../up"} and len(set(mapping.values())) == 2
    for task, folder in mapping.items():
        assert folder == safe_name(task) and "/" not in folder and not folder.startswith(".")
        assert (run / "train" / "adapters" / folder / "adapter_config.json").is_file()
        assert s["adapters"][task]["path"].startswith(str(run))
    assert safe_name("copy") == "copy" and safe_name("a b") != safe_name("a_b")


def test_writes_through_a_symlink_out_of_the_run_are_refused(tiny, tok, tmp_path):
    from train import run_training
    from train.paths import UnsafePathError

    outside = tmp_path / "outside"
    outside.mkdir()
    run = write_run(tmp_path / "run", tok, examples(16, 0), examples(4, 1))
    os.symlink(outside, run / "train")
    with pytest.raises(UnsafePathError, match="outside the run directory"):
        run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    assert list(outside.iterdir()) == []
    os.unlink(run / "train")
    with pytest.raises(UnsafePathError):
        run_training(run, cfg_for(tiny, max_steps=1, eval_every=1, output_dir="../elsewhere"), log=quiet)
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------- issue 15: resume


def test_resume_refuses_checkpoints_of_another_config(tiny, tok, tmp_path):
    """After changing r and lr, --resume returned the old adapter as done; now it refuses,
    naming the keys; `curate run`'s automatic resume starts over instead."""
    from train import run_training
    from train.loop import TrainingError

    run = write_run(tmp_path / "run", tok, examples(32, 0), examples(8, 1))
    cfg = cfg_for(tiny, max_steps=4, eval_every=2, save_every=2)
    first = run_training(run, cfg, log=quiet)  # finished: done.json written
    changed = cfg_for(tiny, max_steps=4, eval_every=2, save_every=2, r=8, lr=1e-2)
    with pytest.raises(TrainingError, match=r"config changed: lr .*r 4 -> 8"):
        run_training(run, changed, log=quiet, resume=True)
    again = run_training(run, cfg_for(tiny, max_steps=4, eval_every=2, save_every=3), log=quiet, resume=True)
    assert again["best_val_loss"] == first["best_val_loss"] and again["fingerprint"] == first["fingerprint"]
    said = []
    s = run_training(run, changed, log=said.append, resume="auto")
    assert any("not resuming" in x and "lr" in x for x in said) and s["fingerprint"] != first["fingerprint"]
    prov = json.loads((run / "train" / "provenance.json").read_text())
    assert prov["config"]["r"] == 8 and prov["summary"]["fingerprint"] == s["fingerprint"]
    # other shards: same config, re-rendered data
    write_run(run, tok, examples(32, 5), examples(8, 1))
    with pytest.raises(TrainingError, match="shards changed"):
        run_training(run, changed, log=quiet, resume=True)


# --------------------------------------------------------------------------- template and end-of-turn


def test_exporter_ships_the_runs_template_never_the_cwds(tiny, tok, tmp_path, monkeypatch):
    from train import run_training
    from transformers import AutoTokenizer

    run = write_run(tmp_path / "run", tok, examples(16, 0), examples(4, 1))
    conf = tmp_path / "conf"
    (conf / "tpl").mkdir(parents=True)
    mine = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    (conf / "tpl" / "my.jinja").write_text(mine)
    cwd = tmp_path / "cwd"
    (cwd / "tpl").mkdir(parents=True)
    (cwd / "tpl" / "my.jinja").write_text("{{ 'the wrong template' }}")
    m = json.loads((run / "manifest.json").read_text())
    m["pipeline"] = str(conf / "pipeline.toml")
    m["render"] = {**m["render"], "template": "tpl/my.jinja", "template_sha256": hashlib.sha256(mine.encode()).hexdigest()}
    m["render"].pop("template_text")
    (run / "manifest.json").write_text(json.dumps(m))
    monkeypatch.chdir(cwd)
    run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    assert AutoTokenizer.from_pretrained(run / "train" / "adapter").chat_template == mine
    # a built-in name is found by name; a hash nothing matches is refused before training
    set_render(run, template="llama-3", template_sha256=hashlib.sha256(
        (REPO / "templates" / "chat" / "llama-3.jinja").read_bytes()).hexdigest())
    run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    assert "start_header_id" in AutoTokenizer.from_pretrained(run / "train" / "adapter").chat_template
    set_render(run, template="tpl/gone.jinja", template_sha256="0" * 64)
    with pytest.raises(DataError, match="chat template the shards were rendered with"):
        run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)


def test_end_of_turn_checked_at_load(tiny, tok, tmp_path):
    from train import run_training

    pairs = [("hi", "Yes."), ("who", "No.")] * 4
    good = chatml_examples(tok, pairs, "t")
    run = chatml_run(tmp_path / "ok", tok, good, chatml_examples(tok, pairs[:2], "v"))
    run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    bad = [(i, t, ids, lab[:-1] + [-100]) if n == 3 else (i, t, ids, lab) for n, (i, t, ids, lab) in enumerate(good)]
    run = chatml_run(tmp_path / "bad", tok, bad, chatml_examples(tok, pairs[:2], "v"))
    with pytest.raises(DataError, match=r"1 supervised span\(s\) of the train split do not end with the end-of-turn '<\|im_end\|>'"):
        run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    # an answer the renderer cut at max_length (render.stats.truncated) lacks its end-of-turn by design
    set_render(run, stats={"truncated": 1})
    run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)
    two = [(i, t, ids, lab[:-1] + [-100]) if n in (2, 3) else (i, t, ids, lab) for n, (i, t, ids, lab) in enumerate(good)]
    run = chatml_run(tmp_path / "bad2", tok, two, chatml_examples(tok, pairs[:2], "v"))
    set_render(run, stats={"truncated": 1})
    with pytest.raises(DataError, match=r"2 supervised span\(s\) .* \(only 1 answer\(s\) were cut at max_length\)"):
        run_training(run, cfg_for(tiny, max_steps=1, eval_every=1), log=quiet)


def test_export_generation_config_card_and_base_reference(tiny, tok, tmp_path):
    """The sample adapter used to ramble to the token limit: EOS was </s> while chatml turns
    end with <|im_end|>. The export now lists the end-of-turn id."""
    from train import run_training
    from transformers import AutoTokenizer, GenerationConfig

    pairs = [("hi", "Yes."), ("who", "No.")] * 4
    run = chatml_run(tmp_path / "r", tok, chatml_examples(tok, pairs, "t"), chatml_examples(tok, pairs[:2], "v"))
    run_training(run, cfg_for(tiny, max_steps=2, eval_every=2, merge=True), log=quiet)
    for folder in ("adapter", "merged"):
        d = run / "train" / folder
        gen = GenerationConfig.from_pretrained(d)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        assert eos[0] == IM_END and tok.eos_token_id in eos
        t = AutoTokenizer.from_pretrained(d)
        assert t.eos_token == "<|im_end|>" and t.chat_template == CHATML
        card = (d / "README.md").read_text()
        shard = json.loads((run / "manifest.json").read_text())["shards"]["train"][0]["sha256"]
        assert shard in card and "<|im_end|>" in card and str(tiny) not in card
    acfg = json.loads((run / "train" / "adapter" / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == tiny.name
    assert "/" not in json.loads((run / "train" / "merged" / "config.json").read_text()).get("_name_or_path", "")
    assert AutoTokenizer.from_pretrained(tok.name_or_path).eos_token == "</s>"  # the run's tokenizer is untouched


# --------------------------------------------------------------------------- eval and chat


def _hand_eval(model, items, tok, stop, max_new):
    """Exact match and answer loss the slow way: one item at a time, no cache, no padding."""
    from train.eval import normalise

    em, nll, n = [], 0.0, 0
    for it in items:
        seq = list(it.prompt)
        for _ in range(max_new):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in stop:
                break
            seq.append(nxt)
        ref = [t for t in it.answer if t not in stop]
        em.append(normalise(tok.decode(seq[len(it.prompt):], skip_special_tokens=True))
                  == normalise(tok.decode(ref, skip_special_tokens=True)))
        full = torch.tensor([list(it.prompt) + list(it.answer)])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
        tgt = full[0, 1:]
        lp = logp[torch.arange(len(tgt)), tgt][len(it.prompt) - 1 :]
        nll -= float(lp.sum())
        n += len(it.answer)
    return float(np.mean(em)), nll / n


def test_eval_reproduces_hand_computed_exact_match_and_loss(tiny, tok, tmp_path):
    from click.testing import CliRunner
    from curate.cli import main
    from train import run_training
    from train.data import load_split, read_manifest
    from train.eval import items_from_split
    from train.load import load_trained

    pairs = [("hi", "Yes."), ("who", "No."), ("what", "Yes."), ("when", "No.")] * 20
    run = chatml_run(tmp_path / "r", tok, chatml_examples(tok, pairs, "t"), chatml_examples(tok, pairs[:4], "v"))
    run_training(run, cfg_for(tiny, epochs=3, batch_tokens=128, eval_every=20, lr=3e-2, early_stopping={"patience": 0}),
                 log=quiet)
    res = CliRunner().invoke(main, ["eval", str(run), "-k", "2", "--max-new-tokens", "8", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    ev = json.loads((run / "manifest.json").read_text())["eval"]
    assert ev["source"] == "val" and ev["arms"] == ["base", "few_shot", "tuned"] and ev["k"] == 2
    assert "tuned EM" in res.output and "(all)" in res.output

    trained = load_trained(run)
    assert trained.stop_ids[0] == IM_END
    items = items_from_split(load_split(run, "val", read_manifest(run)))
    assert len(items) == 4 and all(it.answer[-1] == IM_END for it in items)
    em, loss = _hand_eval(trained.model, items, trained.tokenizer, set(trained.stop_ids), 8)
    got = ev["tasks"]["qa"]["tuned"]
    assert got["n"] == 4 and got["exact_match"] == pytest.approx(em) and got["answer_loss"] == pytest.approx(loss, abs=1e-4)
    assert em == 1.0  # the model learned the answers (and to stop)
    with trained.model.disable_adapter():
        em0, loss0 = _hand_eval(trained.model, items, trained.tokenizer, set(trained.stop_ids), 8)
    assert ev["tasks"]["qa"]["base"]["answer_loss"] == pytest.approx(loss0, abs=1e-4)
    assert ev["tasks"]["qa"]["base"]["exact_match"] == pytest.approx(em0)
    html = (run / "report.html").read_text()
    assert "few_shot EM" in html


def test_chat_prompt_stops_at_end_of_turn(tiny, tok, tmp_path):
    from click.testing import CliRunner
    from curate.cli import main
    from train import run_training

    pairs = [("hi", "Yes."), ("who", "Yes."), ("what", "Yes.")] * 20
    run = chatml_run(tmp_path / "r", tok, chatml_examples(tok, pairs, "t"), chatml_examples(tok, pairs[:3], "v"))
    run_training(run, cfg_for(tiny, epochs=2, batch_tokens=128, eval_every=20, lr=3e-2, early_stopping={"patience": 0}),
                 log=quiet)
    res = CliRunner().invoke(main, ["chat", str(run), "--prompt", "who", "--max-new-tokens", "40"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "Yes."  # stopped at <|im_end|>: nothing after it, far below 40 tokens
    res = CliRunner().invoke(main, ["chat", str(run)], input="hi\n/reset\nwhat\n\n")
    assert res.exit_code == 0 and res.output.count("Yes.") == 2


# --------------------------------------------------------------------------- forgetting reference


def test_self_sample_reference_is_deterministic_for_a_seed(tiny, tok, tmp_path):
    from transformers import AutoModelForCausalLM
    from train.forgetting import self_sample_split

    model = AutoModelForCausalLM.from_pretrained(tiny)
    state = torch.get_rng_state()
    a = self_sample_split(model, tok, "k", 4, 64, 16, 1.0, 7, "cpu", tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), state)  # training's RNG is not consumed
    b = self_sample_split(model, tok, "k", 4, 64, 16, 1.0, 7, "cpu", tmp_path / "b")
    c = self_sample_split(model, tok, "k", 4, 64, 16, 1.0, 8, "cpu", tmp_path / "c")
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.ex_len, b.ex_len)
    assert not np.array_equal(a.tokens, c.tokens)
    assert len(a.ex_len) == 4 and all(a.tokens[a.ex_start] == tok.bos_token_id) and a.ex_len.max() <= 16
    cached = list((tmp_path / "a").glob("self_samples-*.npz"))
    assert len(cached) == 1
    again = self_sample_split(None, tok, "k", 4, 64, 16, 1.0, 7, "cpu", tmp_path / "a")  # from the cache: no model
    assert np.array_equal(again.tokens, a.tokens)


def test_default_monitor_measures_on_self_samples(tiny, tok, tmp_path):
    from train import run_training

    run = write_run(tmp_path / "r", tok, examples(24, 0), examples(6, 1))
    s = run_training(run, cfg_for(tiny, max_steps=3, eval_every=3, lr=3e-2), log=quiet)
    assert s["forgetting_reference"] == "self_samples" and s["kl_to_base"] > 0
    assert s["ref_loss_after"] != pytest.approx(s["ref_loss_before"], abs=1e-7)
    assert list((run / "train" / "reference").glob("self_samples-*.npz"))


# --------------------------------------------------------------------------- curate run resumes training


def test_curate_run_resumes_an_interrupted_training(tiny, tmp_path, monkeypatch):
    """`curate run` killed during training, run again: it resumes from the last checkpoint
    and ends with the same adapter weights as an unbroken run; `curate eval --test` reads a
    data file with the project's readers and renders it with the run's template."""
    from click.testing import CliRunner
    from safetensors.torch import load_file

    import train.loop
    from curate.cli import main
    from test_runner import make_inputs

    pipeline = make_inputs(tmp_path, render=True)
    pipeline.write_text(pipeline.read_text() + f"""
[train]
base_model = "{tiny}"
r = 4
lr = 3e-3
epochs = 2
batch_tokens = 128
micro_batch_tokens = 128
eval_every = 3
save_every = 2
warmup = 0.0
forgetting = {{ samples = 2, max_tokens = 64, seq_len = 32 }}
""")
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(pipeline), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    real, calls = train.loop.make_batch, []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(train.loop, "make_batch", dying)
    res = runner.invoke(main, ["run", str(pipeline), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and not (tmp_path / "b" / "train" / "adapter").exists()
    monkeypatch.setattr(train.loop, "make_batch", real)
    res = runner.invoke(main, ["run", str(pipeline), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "resumed from step-" in res.output
    wa = load_file(str(tmp_path / "a" / "train" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "train" / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)

    res = runner.invoke(main, ["eval", str(tmp_path / "b"), "--test", str(tmp_path / "alpaca.jsonl"), "--arms", "tuned",
                               "--task", "qa", "--limit", "3", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "b" / "manifest.json").read_text())["eval"]
    assert ev["source"].endswith("alpaca.jsonl") and ev["tasks"]["qa"]["tuned"]["n"] == 3
    assert "malformed test record" in res.output  # the broken lines of alpaca.jsonl were skipped, not fatal


def test_fp16_refused_and_threads_key(tiny):
    from curate.contract.typed_config import ConfigError
    from train.config import parse_train_config

    with pytest.raises(ConfigError) as err:
        parse_train_config({"base_model": str(tiny), "dtype": "float16"}, Path("/"))
    assert err.value.key == "train.dtype" and "loss scaling" in str(err.value.message())
    assert parse_train_config({"base_model": str(tiny), "threads": 1}, Path("/")).threads == 1
    assert parse_train_config({"base_model": str(tiny), "threads": 0}, Path("/")).threads == 0  # torch's default
    with pytest.raises(ConfigError) as err:
        parse_train_config({"base_model": str(tiny), "threads": -2}, Path("/"))
    assert err.value.key == "train.threads"


@pytest.mark.parametrize("per_task", [False, True])
def test_per_task_early_stopping(tiny, tok, tmp_path, monkeypatch, per_task):
    """Scripted val losses: the overall loss only worsens after step 0 while `copy` keeps
    improving. Plain early stopping stops after `patience` evaluations; per_task goes on."""
    import train.loop
    from train import run_training

    script = iter([(5.0, 5.0)] + [(4.9 - 0.1 * i, 6.0 + 0.5 * i) for i in range(100)])

    def fake_evaluate(model, batches, n_tasks, dist):
        copy, rev = next(script)
        return torch.tensor([[copy * 10, 10.0], [rev * 10, 10.0]], dtype=torch.float64)

    monkeypatch.setattr(train.loop, "evaluate", fake_evaluate)
    run = write_run(tmp_path / "r", tok, examples(48, 0), examples(8, 1))
    s = run_training(run, cfg_for(tiny, max_steps=8, eval_every=1, batch_tokens=64,
                                  early_stopping={"patience": 2, "per_task": per_task}), log=quiet)
    assert s["best_step"] == 0
    assert s["total_steps"] > 4
    assert (s["stopped_early"], s["steps"]) == ((False, s["total_steps"]) if per_task else (True, 2))
