"""`quality`: heuristic, LM (perplexity / IFD, with and without a PEFT adapter, cached),
and verifier scorers. LM unit tests use a tiny in-test Llama; the hand-computed loss
check uses the real pretrained stories260K (skipped when ../shared is absent)."""
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.stages.base import StageContext
from curate.stages.quality.stage import Config, QualityStage, lm_inputs
from curate.contract.typed_config import ConfigError, load_dataclass

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "models" / "stories260K"


def conv(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def table(convs, tasks=None):
    n = len(convs)
    return pl.DataFrame({
        "id": [f"r{i}" for i in range(n)], "source": ["s"] * n, "task": tasks or ["t"] * n,
        "messages": convs, "meta": ["{}"] * n, "origin": [f"f:{i}" for i in range(n)],
    }, schema_overrides={"messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))})


def run(t, tmp_path, stage_dir=None, **kw):
    cfg = load_dataclass(Config, {"kind": "quality", **kw})
    logs = []
    ctx = StageContext(tmp_path, tmp_path, 0, stage_dir or (tmp_path / "stage"), log=logs.append)
    r = QualityStage(cfg, ctx).process(t)
    assert len(r.kept) == len(t) and len(r.dropped) == 0  # scoring never drops
    assert r.kept.select(t.columns).equals(t)  # and never reshapes what was there
    return r


# ------------------------------------------------------------------ heuristic

def test_heuristic_ranks_junk_below_good_answers(tmp_path):
    good = conv("Explain photosynthesis.", "Photosynthesis is how plants turn sunlight, water and carbon dioxide "
                "into glucose and oxygen. It takes place in the chloroplasts, using chlorophyll.")
    t = table([good,
               conv("Tell me a story.", "the the the the the the the the the the the the the the the the the the"),
               conv("Write a poem about rain.", "As an AI language model, I cannot write poems."),
               conv("hello there", "hello there"),
               conv("Say something.", ""),
               conv("Describe the sea.", "@@@ ### $$$ %%% ^^^ &&& *** ~~~ <<< >>> ||| ``` +++ ===")])
    r = run(t, tmp_path, scorer="heuristic")
    s = r.kept["heuristic"].to_list()
    assert s[0] == max(s) and s[4] == 0.0
    assert all(s[0] > x for x in s[1:])
    assert {"heuristic_repetition", "heuristic_no_refusal", "heuristic_length"} <= set(r.kept.columns)
    assert r.kept["heuristic_no_refusal"][2] == 0.0 and r.kept["heuristic_not_echo"][3] == 0.0
    # a weight of zero removes a feature's influence
    r2 = run(t, tmp_path, scorer="heuristic", column="h2",
             weights={"length": 0, "repetition": 0, "diversity": 0, "clean": 0, "not_echo": 0, "no_refusal": 1,
                      "substance": 0, "complete": 0})
    # (an answer without a single word scores 0 whatever the weights)
    assert r2.kept["h2"].to_list() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert r.stats["by_task"]["t"]["n"] == 6
    t3 = table([conv("Capital of France?", "Paris"), conv("Capital of Peru?", "N/A"),
                conv("Explain leap years.", "A year is a leap year when it is divisible by four, except centuri"),
                conv("Explain leap years.", "A year is a leap year when it is divisible by four, except centuries."),
                conv("Why?", "I'm sorry, but I can't assist with that.")])
    r3 = run(t3, tmp_path, scorer="heuristic")
    assert r3.kept["heuristic_substance"].to_list() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert r3.kept["heuristic_complete"].to_list() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert r3.kept["heuristic_no_refusal"].to_list() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_lm_inputs_format_multi_turn():
    t = table([[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}], [{"role": "user", "content": "no answer"}]])
    roles = {"system": "S: ", "user": "U: ", "assistant": "A: ", "tool": "T: "}
    out = lm_inputs(t, roles, "\n")
    assert out["prompt"][0] == "S: Be brief.\nU: Hi\nA: Hello\nU: 2+2?\nA: "
    assert out["answer"][0] == "4"
    assert out["prompt"][1] == "" and out["answer"][1] == ""


# ------------------------------------------------------------------ LM scorers (tiny model)

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny_lm")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the quick brown fox jumps over the lazy dog", "User: hi\nAssistant: hello"] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


LM_ROWS = [conv("the quick brown fox", "jumps over the lazy dog"), conv("hi", "hello"),
           conv("a much longer prompt about foxes and dogs and the lazy afternoon", "the dog sleeps"),
           conv("empty answer", "")]


def test_perplexity_and_ifd_are_finite_and_cached(tiny_lm, tmp_path):
    t = table(LM_ROWS)
    r = run(t, tmp_path, scorer="ifd", model=str(tiny_lm), batch_size=2)
    ifd = r.kept["ifd"].to_list()
    assert all(math.isfinite(v) and v > 0 for v in ifd[:3]) and ifd[3] is None
    lc, la = r.kept["ifd_loss_cond"].to_numpy()[:3], r.kept["ifd_loss_answer"].to_numpy()[:3]
    assert np.allclose(np.exp(lc - la), ifd[:3])
    assert r.stats["computed"] == 4 and r.stats["cached"] == 0
    # rerun: nothing recomputed, same bytes of scores
    again = run(t, tmp_path, scorer="ifd", model=str(tiny_lm), batch_size=3)
    assert again.stats["computed"] == 0 and again.stats["cached"] == 4
    assert again.kept["ifd"].to_list() == ifd
    # one new record: only it is computed
    t2 = pl.concat([t, table([conv("over the dog", "the fox")]).with_columns(pl.lit("new").alias("id"))])
    third = run(t2, tmp_path, scorer="ifd", model=str(tiny_lm))
    assert third.stats["computed"] == 1 and third.stats["cached"] == 4
    # perplexity: exp of the conditional loss, the same loss IFD uses
    p = run(t, tmp_path, scorer="perplexity", model=str(tiny_lm), batch_size=1)
    assert np.allclose(p.kept["perplexity_loss"].to_numpy()[:3], lc, atol=1e-5)
    assert np.allclose(p.kept["perplexity"].to_numpy()[:3], np.exp(lc))


def test_adapter_changes_scores_and_cache_key(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()
    t = table(LM_ROWS[:3])
    plain = run(t, tmp_path, scorer="perplexity", model=str(tiny_lm))
    tuned = run(t, tmp_path, scorer="perplexity", model=str(tiny_lm), adapter=str(adapter))
    assert tuned.stats["cache"] != plain.stats["cache"] and tuned.stats["computed"] == 3
    assert not np.allclose(plain.kept["perplexity"].to_numpy(), tuned.kept["perplexity"].to_numpy())


def test_embed_column_feeds_select_diversity(tiny_lm, tmp_path):
    t = table(LM_ROWS[:3])
    r = run(t, tmp_path, scorer="perplexity", model=str(tiny_lm), embed=True)
    emb = r.kept["perplexity_embedding"]
    assert emb.dtype == pl.List(pl.Float32) and len(emb[0]) == 32


# ------------------------------------------------------------------ hand-computed losses, real model

@pytest.mark.skipif(not (STORIES / "config.json").is_file(), reason="../shared/data/models/stories260K absent")
def test_ifd_matches_hand_computed_losses_on_stories260k(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [("Tell me a story about a cat.", "Once upon a time, there was a little cat. The cat liked to play."),
            ("What did Lily find?", "Lily found a big red ball in the park. She was very happy."),
            ("Say something.", "zq xv kjw plm brr qqq vvv")]
    t = table([conv(u, a) for u, a in rows])
    r = run(t, tmp_path, scorer="ifd", model=str(STORIES), batch_size=3)
    tok = AutoTokenizer.from_pretrained(STORIES)
    model = AutoModelForCausalLM.from_pretrained(STORIES).eval()
    hand = []
    bos, eos = [tok.bos_token_id], [tok.eos_token_id]
    with torch.no_grad():
        for u, a in rows:
            # the conditioned text is tokenized whole; the answer starts at the token
            # holding its first character; the answer + EOS is scored
            prompt = f"User: {u}\nAssistant: "
            enc = tok(prompt + a, add_special_tokens=False)
            k = enc.char_to_token(len(prompt))
            ids = enc["input_ids"]
            ans = ids[k:] + eos
            cond = model(torch.tensor([bos + ids + eos]), labels=torch.tensor([[-100] * (1 + k) + ans])).loss.item()
            solo = tok(a, add_special_tokens=False)["input_ids"] + eos
            alone = model(torch.tensor([bos + solo]), labels=torch.tensor([[-100] + solo])).loss.item()
            hand.append((cond, alone, math.exp(cond) / math.exp(alone)))
    got = r.kept
    assert np.allclose(got["ifd_loss_cond"].to_numpy(), [h[0] for h in hand], atol=1e-4)
    assert np.allclose(got["ifd_loss_answer"].to_numpy(), [h[1] for h in hand], atol=1e-4)
    assert np.allclose(got["ifd"].to_numpy(), [h[2] for h in hand], rtol=1e-4)
    assert list(np.argsort(got["ifd"].to_numpy())) == list(np.argsort([h[2] for h in hand]))
    assert list(np.argsort(got["ifd_loss_cond"].to_numpy())) == list(np.argsort([h[0] for h in hand]))
    # TinyStories text is far more predictable than gibberish
    assert got["ifd_loss_cond"][0] < got["ifd_loss_cond"][2]


@pytest.mark.skipif(not (STORIES / "config.json").is_file(), reason="../shared/data/models/stories260K absent")
def test_conditioned_answer_is_the_tail_of_the_joint_tokenization_stories260k():
    """Regression: prompt and answer were tokenized apart and concatenated, so the
    SentencePiece tokenizer opened every answer with a "▁" piece the whole text never
    contains (and no EOS was scored)."""
    from transformers import AutoTokenizer

    from curate.stages.common.lm import build_sequences

    tok = AutoTokenizer.from_pretrained(STORIES)
    prompts = ["User: What did Lily find?\nAssistant: ", "User: Tell me a story.\nAssistant: "]
    answers = ["Lily found a big red ball.", "Once upon a time, there was a cat."]
    cond, cstart, alone, astart = build_sequences(tok, prompts, answers, max_length=512)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for p, a, c, s, al, st in zip(prompts, answers, cond, cstart, alone, astart):
        joint = tok(p + a, add_special_tokens=False)["input_ids"]
        assert c == [bos] + joint + [eos]
        k = s - 1
        assert c[s:] == joint[k:] + [eos] and tok.decode(joint[k:]).strip() == a
        assert tok.convert_ids_to_tokens(c[s]) != "▁"
        # the old way: separate tokenization adds a piece the whole text does not have
        apart = tok(p, add_special_tokens=False)["input_ids"] + tok(a, add_special_tokens=False)["input_ids"]
        assert apart != joint and len(apart) == len(joint) + 1
        # answer alone: tokenized on its own, with the same EOS target
        assert al == [bos] + tok(a, add_special_tokens=False)["input_ids"] + [eos] and st == 1
    # score_eos=False: the plain answer, nothing appended
    c2, s2, a2, _ = build_sequences(tok, prompts, answers, max_length=512, score_eos=False)
    assert [c[:-1] for c in cond] == c2 and [a[:-1] for a in alone] == a2 and s2 == cstart


def test_build_sequences_offsets_truncation_and_eos(tiny_lm):
    """On an in-test fast (byte-level BPE) tokenizer: a token straddling the prompt/answer
    boundary belongs to the answer; truncation keeps half the budget for the answer and
    cuts the prompt from the left (a cut answer gets no EOS); an empty answer is unscored."""
    from transformers import AutoTokenizer

    from curate.stages.common.lm import build_sequences

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert tok.is_fast
    bos, eos = tok.bos_token_id, tok.eos_token_id
    prompts = ["the quick bro", "User: hi\nAssistant:", "the lazy dog", "over the lazy dog " * 6]
    answers = ["wn fox jumps", " hello", "", "the quick brown fox jumps over the lazy dog " * 3]
    cond, cstart, alone, astart = build_sequences(tok, prompts, answers, max_length=40)
    # straddling token: joint pieces of "the quick brown..." have one spanning "bro|wn"
    enc = tok(prompts[0] + answers[0], add_special_tokens=False, return_offsets_mapping=True)
    k = next(j for j, (st, e) in enumerate(enc["offset_mapping"]) if st < len(prompts[0]) < e)
    assert cond[0] == [bos] + enc["input_ids"] + [eos] and cstart[0] == 1 + k
    assert tok.decode(cond[0][cstart[0]:-1]) == " brown fox jumps"
    # clean boundary: the answer is exactly its own pieces
    joint1 = tok(prompts[1] + answers[1], add_special_tokens=False)["input_ids"]
    assert cond[1] == [bos] + joint1 + [eos] and tok.decode(cond[1][cstart[1]:-1]) == " hello"
    # empty answer: nothing scored, not even EOS
    assert len(cond[2]) == cstart[2] and alone[2] == [bos]
    # truncation: 40 tokens; the answer keeps at least half of the 39 after BOS, no EOS
    c, s = cond[3], cstart[3]
    assert len(c) == 40 and len(c) - s >= 39 // 2 and eos not in c[s:]
    joint3 = tok(prompts[3] + answers[3], add_special_tokens=False)["input_ids"]
    p_end = 1 + next(j for j, (_, e) in enumerate(
        tok(prompts[3] + answers[3], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])
        if e > len(prompts[3]))
    assert c[1:s] == joint3[p_end - 1 - (s - 1): p_end - 1]  # the prompt's end, cut from the left
    assert c[s:] == joint3[p_end - 1: p_end - 1 + len(c) - s]
    assert len(alone[3]) <= 40 and eos not in alone[3][1:]
    assert tok.decode(alone[3][1:]).strip() == tok.decode(c[s:]).strip()


# ------------------------------------------------------------------ verifier

def test_verifier_calls_user_functions_per_task(tmp_path):
    mod_dir = tmp_path / "checks"
    mod_dir.mkdir()
    (mod_dir / "my_checks_q.py").write_text(
        "def math_ok(rec):\n"
        "    return rec['response'].strip() == str(eval(rec['prompt'].split('=')[0]))\n"
        "def length(rec):\n"
        "    if rec['meta'].get('skip'):\n        return None\n"
        "    if 'boom' in rec['prompt']:\n        raise RuntimeError('boom')\n"
        "    return len(rec['response']) / 10\n")
    t = table([conv("2+2=", "4"), conv("3*3=", "8"), conv("write", "abcde"), conv("boom", "x"), conv("skip", "y")],
              tasks=["math", "math", "gen", "gen", "gen"]).with_columns(
        pl.Series("meta", ["{}", "{}", "{}", "{}", '{"skip": true}']))
    fns = {"math": "my_checks_q:math_ok", "*": "my_checks_q:length"}
    load_dataclass(Config, {"kind": "quality", "scorer": "verifier", "functions": fns,
                            "python_path": ["checks"]}).check_paths(tmp_path)  # found, not run
    r = run(t, tmp_path, scorer="verifier", functions=fns, python_path=["checks"])
    assert r.kept["verifier"].to_list() == [1.0, 0.0, 0.5, None, None]
    assert r.kept["verifier_error"].to_list()[3] == "RuntimeError: boom"
    assert r.stats["errors"] == 1


# ------------------------------------------------------------------ config

def test_config_refusals(tmp_path):
    bad = [({"scorer": "ifd"}, "model"), ({"scorer": "heuristic", "model": "x"}, "model"),
           ({"scorer": "heuristic", "adapter": "a"}, "adapter"), ({"scorer": "verifier"}, "functions"),
           ({"scorer": "verifier", "functions": {"t": "nocolon"}}, "functions.t"),
           ({"scorer": "heuristic", "weights": {"nope": 1}}, "weights.nope"),
           ({"scorer": "bert"}, "scorer"), ({"scorer": "heuristic", "embed": True}, "embed")]
    for kw, key in bad:
        with pytest.raises(ConfigError) as e:
            load_dataclass(Config, {"kind": "quality", **kw}, "stages[1]")
        assert e.value.key == f"stages[1].{key}", (kw, e.value)
    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "ifd", "model": "missing_dir"})
    with pytest.raises(ConfigError, match="no model directory"):
        cfg.check_paths(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"")
    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "ifd", "model": "m"})
    with pytest.raises(ConfigError, match="safetensors"):
        cfg.check_paths(tmp_path)
    cfg = load_dataclass(Config, {"kind": "quality", "scorer": "verifier", "functions": {"*": "no_such_mod_xyz:f"}})
    with pytest.raises(ConfigError, match="not found"):
        cfg.check_paths(tmp_path)


def test_existing_column_is_refused(tmp_path):
    t = table([conv("a", "b")]).with_columns(pl.lit(1.0).alias("heuristic"))
    with pytest.raises(ValueError, match="already exists"):
        run(t, tmp_path, scorer="heuristic")


def test_select_diversity_with_model_embeddings_is_cached(tiny_lm, tmp_path):
    from curate.stages.select import Config as SelectConfig, SelectStage

    t = table([conv("the quick brown fox", "jumps over the lazy dog"),
               conv("the quick brown fox", "jumps over the lazy dog"),  # same text, another id
               conv("hi", "hello")]).with_columns(pl.Series("score", [0.9, 0.8, 0.7]))
    cfg = load_dataclass(SelectConfig, {"kind": "select", "column": "score", "diversity": 0.001,
                                        "embedding": "model", "embedding_model": str(tiny_lm)})
    cfg.check_paths(tmp_path)
    logs = []
    ctx = StageContext(tmp_path, tmp_path, 0, tmp_path / "sel", log=logs.append)
    r = SelectStage(cfg, ctx).process(t)
    assert r.kept["id"].to_list() == ["r0", "r2"]
    assert r.dropped["_reason"].to_list() == ["too_similar"]
    again = SelectStage(cfg, ctx).process(t)
    assert again.kept.equals(r.kept)
    assert any("3 cached, 0 to compute" in line for line in logs)


def test_heuristic_complete_ignores_code_endings(tmp_path):
    code = "def flatten(values):\n    out = []\n    for sub in values:\n        out.extend(sub)\n    return out"
    r = run(table([conv("Write flatten in Python.", code)]), tmp_path, scorer="heuristic")
    assert r.kept["heuristic_complete"][0] == 1.0


# ------------------------------------------------------------------ heuristic: eager = expressions

def _reference_features(t: pl.DataFrame, length_target: int = 50) -> pl.DataFrame:
    """The heuristic's features as plain polars expressions (the code before the eager
    rewrite): the reference the eager `features` must equal."""
    from curate.contract.views import text_view
    from curate.stages.common.text_stats import basic_stats, repetition_stats
    from curate.stages.quality.heuristic import CODE_RE, PLACEHOLDER_RE, REFUSAL_RE

    frame = t.select(text_view("prompt").alias("p"), text_view("response").alias("r"))
    st = basic_stats(pl.col("r").str.replace_all(r"(?s)```.*?```", "\n"))
    rep = repetition_stats(frame["r"], top_ngrams=(2, 3), dup_ngrams=(5,))
    words = pl.col("r").str.to_lowercase().str.extract_all(r"\w+")
    n_words = words.list.len()
    norm_p, norm_r = (pl.col(c).str.strip_chars().str.to_lowercase() for c in ("p", "r"))
    worst = pl.max_horizontal("dup_line_char_frac", "top_2gram_frac", "top_3gram_frac", "dup_5gram_frac")
    return pl.concat([frame, rep], how="horizontal").select(
        ((n_words.cast(pl.Float64) + 1).log() / math.log(length_target + 1)).clip(0.0, 1.0).alias("length"),
        (1.0 - worst).clip(0.0, 1.0).alias("repetition"),
        pl.when(n_words >= 20).then(words.list.n_unique() / n_words).otherwise(1.0).clip(0.0, 1.0).alias("diversity"),
        (1.0 - st["symbol_ratio"] - st["url_ratio"]).clip(0.0, 1.0).alias("clean"),
        pl.when((norm_r.str.len_chars() > 0) & (norm_r == norm_p)).then(0.0).otherwise(1.0).alias("not_echo"),
        pl.when(pl.col("r").str.contains(REFUSAL_RE)).then(0.0).otherwise(1.0).alias("no_refusal"),
        pl.when(pl.col("r").str.contains(PLACEHOLDER_RE)
                | pl.col("r").str.strip_chars().str.split("\n").list.last().str.contains(PLACEHOLDER_RE))
        .then(0.0).otherwise(1.0).alias("substance"),
        pl.when((n_words >= 8) & ~pl.col("r").str.contains(CODE_RE)
                & pl.col("r").str.strip_chars_end().str.contains(r"\p{L}$"))
        .then(0.0).otherwise(1.0).alias("complete"),
    ).with_columns(pl.when(pl.col("length") > 0).then(pl.all()).otherwise(0.0))


ANSWERS = ["", "N/A", "Paris", "As an AI language model, I cannot help", "see https://example.com/x and www.y.org now",
           "```py\nx = 1 {}\n```\nThe code sets x.", "word " * 30, " ".join(f"w{i}" for i in range(40)),
           "Ça va très bien, merci beaucoup pour la question posée hier soir au café du coin", "今天你吃饭了吗？" * 5,
           "🙂🙂🙂 #### @@@ $$$ ***", "The answer stops in the midd", "line one\nline one\nline one\nline two",
           "İstanbul İzmir ΣΊΣΥΦΟΣ straße " * 4]


def test_heuristic_features_equal_the_expressions():
    from hypothesis import given, settings, strategies as st
    from polars.testing import assert_frame_equal

    from curate.stages.quality.heuristic import features

    t = table([conv(f"Question {i}?", a) for i, a in enumerate(ANSWERS)] + [conv("Paris", "paris")])
    assert_frame_equal(features(t), _reference_features(t))

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.one_of(st.sampled_from(ANSWERS), st.text(max_size=120),
                              st.text(alphabet="ab c\n.`#é1", max_size=200)), min_size=1, max_size=12))
    def check(answers):
        t = table([conv("Why?", a) for a in answers])
        assert_frame_equal(features(t), _reference_features(t))

    check()
