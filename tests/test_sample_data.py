"""The bundled sample data: regenerates byte for byte, parses as its formats say (except the
planted malformed inputs, counted), its ground truth (defects.json) matches what is in the
files, and the bundled tokenizer loads offline with transformers and round-trips text."""
from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import load_script

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
GENERATED_DIRS = ("raw", "evalsets", "tokenizer")


def _load_generator():
    return load_script(SAMPLE / "make_sample_data.py", "make_sample_data")


GEN = _load_generator()
DEFECTS = json.loads((SAMPLE / "defects.json").read_text(encoding="utf-8"))


def _content(path: Path) -> bytes:
    """gzip members are compared decompressed: the container's bytes depend on the zlib build."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _generated_files(root: Path) -> list[str]:
    files = [p for d in GENERATED_DIRS for p in (root / d).rglob("*") if p.is_file()]
    return sorted(str(p.relative_to(root)) for p in files) + ["defects.json"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    GEN.main(["--out", str(out)])
    return out


def test_regenerating_gives_identical_files(regenerated):
    committed = _generated_files(SAMPLE)
    assert committed == _generated_files(regenerated), "committed files differ from what the generator writes"
    for rel in committed:
        a, b = _content(SAMPLE / rel), _content(regenerated / rel)
        assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), f"{rel} is stale: rerun make_sample_data.py"


def test_gzip_header_is_reproducible(regenerated):
    # mtime=0 and no file name: two runs of the same zlib give the same container bytes.
    rel = "raw/summarize_messages.jsonl.gz"
    assert (SAMPLE / rel).read_bytes()[:10] == (regenerated / rel).read_bytes()[:10]
    assert (SAMPLE / rel).read_bytes()[4:8] == b"\0\0\0\0"


# ---- parsing each file with plain json/csv/gzip ---------------------------------------------

SHAREGPT_ROLES = {"system", "human", "gpt", "function_call", "observation"}
MESSAGE_ROLES = {"system", "user", "assistant", "tool"}


def _is_str(*xs):
    return all(isinstance(x, str) for x in xs)


def _check_alpaca(r):
    if not isinstance(r, dict):
        return "not_an_object"
    if "instruction" not in r or "output" not in r:
        return "missing_field"
    if not _is_str(r["instruction"], r["output"], r.get("input", "")):
        return "wrong_type"
    for q, a in r.get("history", []):
        assert _is_str(q, a)
    return None


def _check_messages(r):
    if not isinstance(r, dict):
        return "not_an_object"
    if "messages" not in r:
        return "missing_field"
    if not isinstance(r["messages"], list):
        return "wrong_type"
    for m in r["messages"]:
        if not isinstance(m.get("content"), str):
            return "wrong_type"
        if m.get("role") not in MESSAGE_ROLES:
            return "unknown_role"
    return None


def _check_dolly(r):
    if not isinstance(r, dict):
        return "not_an_object"
    if any(k not in r for k in ("instruction", "context", "response", "category")):
        return "missing_field"
    if not _is_str(r["instruction"], r["context"], r["response"], r["category"]):
        return "wrong_type"
    return None


def _check_sharegpt(r):
    if not isinstance(r, dict):
        return "not_an_object"
    if "conversations" not in r:
        return "missing_field"
    for t in r["conversations"]:
        if not isinstance(t.get("value"), str):
            return "wrong_type"
        if t.get("from") not in SHAREGPT_ROLES:
            return "unknown_role"
    return None


def _jsonl_records(path: Path):
    """(line number, record or None, error) for every line."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for i, raw in enumerate(data.split(b"\n")[:-1], 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield i, None, "invalid_utf8"
            continue
        try:
            yield i, json.loads(text), None
        except json.JSONDecodeError:
            yield i, None, "invalid_json"


def _load(rel: str) -> dict:
    """location -> (record or None, error) for one raw file, parsed with the stdlib."""
    path = SAMPLE / rel
    check = {"alpaca": _check_alpaca, "messages": _check_messages, "dolly": _check_dolly,
             "sharegpt": _check_sharegpt}.get(DEFECTS["files"][rel]["format"])
    out = {}
    if rel.endswith(".jsonl") or rel.endswith(".jsonl.gz"):
        for line, rec, err in _jsonl_records(path):
            out[line] = (rec, err or check(rec))
    elif rel.endswith(".json"):
        for i, rec in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            out[i] = (rec, check(rec))
    else:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
        assert rows[0] == ["prompt", "completion"]
        for i, row in enumerate(rows[1:]):
            err = None if len(row) == 2 else ("extra_field" if len(row) > 2 else "missing_field")
            out[i] = (row, err)
    return out


RAW = {rel: _load(rel) for rel in DEFECTS["files"]}


def _loc(item):
    return item["index"] if "index" in item else item["line"]


@pytest.mark.parametrize("rel", sorted(DEFECTS["files"]))
def test_files_parse_except_planted_malformed(rel):
    recs = RAW[rel]
    info = DEFECTS["files"][rel]
    assert len(recs) == info["records"]
    bad = {loc: err for loc, (_, err) in recs.items() if err}
    planted = {_loc(it): it["error"] for it in DEFECTS["defects"]["malformed"]["items"] if it["file"] == rel}
    assert bad == planted
    assert len(bad) == info["malformed"] > 0


def test_size_and_mix():
    total = sum(f["records"] for f in DEFECTS["files"].values())
    assert 3000 <= total <= 5000
    size = sum(p.stat().st_size for d in GENERATED_DIRS for p in (SAMPLE / d).rglob("*") if p.is_file())
    assert size < 5 * 2**20
    assert {f["format"] for f in DEFECTS["files"].values()} == {"alpaca", "sharegpt", "messages", "dolly", "prompt_completion"}
    categories = {r["category"] for r, err in RAW["raw/translate_dolly.jsonl"].values() if not err}
    assert categories == {"translate", "qa"}
    # Every kind is planted at least a few times and stays a minority.
    for kind, d in DEFECTS["defects"].items():
        assert d["count"] == len(d["items"]) >= 3, kind
        assert d["rate"] < 0.05, kind


# ---- the ground truth matches the files -------------------------------------------------------

FMT = {rel: GEN.Fmt({"alpaca": "alpaca", "sharegpt": "sharegpt", "messages": "messages", "dolly": "dolly",
                     "prompt_completion": "csv"}[f["format"]]) for rel, f in DEFECTS["files"].items()}


def _rec(item):
    rec, err = RAW[item["file"]][_loc(item)]
    assert err is None, item
    return rec


def _items(kind):
    return DEFECTS["defects"][kind]["items"]


def _strip_id(rec):
    return {k: v for k, v in rec.items() if k != "id"} if isinstance(rec, dict) else rec


def test_duplicates_are_what_they_claim():
    for it in _items("exact_duplicate"):
        assert _strip_id(_rec(it)) == _strip_id(_rec(it["duplicate_of"]))
    fold = lambda s: " ".join(unicodedata.normalize("NFC", s).replace("\u200b", "").split())  # noqa: E731
    for it in _items("duplicate_after_normalize"):
        a, b = _rec(it), _rec(it["duplicate_of"])
        f = FMT[it["file"]]
        assert a != b and fold(f.answer(a)) == fold(f.answer(b)) and f.prompt(a) == f.prompt(b)
    for it in _items("near_duplicate"):
        a, b = _rec(it), _rec(it["duplicate_of"])
        f = FMT[it["file"]]
        j = GEN.jaccard(f.text(a), f.text(b))
        assert 0.7 <= j < 1.0 and round(j, 3) == it["jaccard_5gram"]
    for it in _items("cross_source_duplicate"):
        a, b = _rec(it), _rec(it["duplicate_of"])
        assert (a["instruction"], a["response"]) == (b["instruction"], b["output"]) and not b["input"]


def test_no_unplanted_exact_duplicates():
    """Identical records (ids aside) occur only where an exact duplicate was planted."""
    planted = defaultdict(set)
    for it in _items("exact_duplicate"):
        planted[it["file"]] |= {_loc(it), _loc(it["duplicate_of"])}
    for rel, recs in RAW.items():
        groups = defaultdict(list)
        for loc, (rec, err) in recs.items():
            if not err:
                groups[json.dumps(_strip_id(rec), sort_keys=True)].append(loc)
        dups = {loc for locs in groups.values() if len(locs) > 1 for loc in locs}
        assert dups <= planted[rel], rel


def test_answer_defects_are_in_the_answers():
    refusals, placeholders = set(GEN._REFUSALS), set(GEN._PLACEHOLDERS)
    for it in _items("empty_answer"):
        assert FMT[it["file"]].answer(_rec(it)).strip() == ""
    for it in _items("placeholder_answer"):
        assert FMT[it["file"]].answer(_rec(it)) in placeholders
    for it in _items("refusal"):
        assert FMT[it["file"]].answer(_rec(it)) in refusals
    for it in _items("truncated"):
        ans = FMT[it["file"]].answer(_rec(it))
        assert len(ans) == it["kept_chars"] < it["full_chars"] and ans[-1].isalpha()
    for it in _items("repeated_text"):
        ans = FMT[it["file"]].answer(_rec(it))
        unit = ans.split(". ")[0]
        assert ans.count(unit) == it["repeats"] >= 6
    for it in _items("merged_instructions"):
        ans = FMT[it["file"]].answer(_rec(it))
        assert "### Instruction:" in ans if it["style"] == "template_leak" else ans.startswith("1. ")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def test_pii_is_present_and_cards_are_luhn_valid():
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
    card = re.compile(r"\b(?:\d[ -]?){13,16}\b")
    kinds = set()
    for it in _items("pii"):
        rec = _rec(it)
        f = FMT[it["file"]]
        text = f.prompt(rec) if it["in"] == "prompt" else f.answer(rec)
        kinds.add(it["pii"])
        if "email" in it["pii"]:
            assert email.search(text)
        if it["pii"] == "card":
            digits = re.sub(r"\D", "", card.search(text).group())
            assert _luhn(digits)
    assert kinds == {"email", "phone", "card", "email+phone", "ip"}


def _norm_q(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower().replace("question: ", ""))


def test_eval_leaks_are_planted_and_only_there():
    evalset = [json.loads(x) for x in (SAMPLE / "evalsets" / "sample_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {e["id"]: e for e in evalset}
    assert len(evalset) == DEFECTS["evalset"]["items"] and all(e["question"] and e["answer"] for e in evalset)
    leaked = defaultdict(set)
    for it in _items("eval_leak"):
        rec, q = _rec(it), by_id[it["eval_id"]]["question"]
        text = json.dumps(rec, ensure_ascii=False)
        if it["variant"] in ("verbatim", "in_dialogue"):
            assert q in text
        else:
            prompt = FMT[it["file"]].prompt(rec)
            assert prompt != q and difflib.SequenceMatcher(None, _norm_q(prompt), _norm_q(q)).ratio() > 0.9
        leaked[it["file"]].add(_loc(it))
    # No other training record contains an eval question, even after case/punctuation folding.
    qs = {_norm_q(e["question"])[:60] for e in evalset}
    for rel, recs in RAW.items():
        for loc, (rec, err) in recs.items():
            if err or loc in leaked[rel]:
                continue
            body = _norm_q(json.dumps(rec, ensure_ascii=False))
            assert not any(q in body for q in qs), (rel, loc)


def test_wrong_language_answers_are_identified_by_fasttext():
    fasttext = pytest.importorskip("fasttext")
    from curate.stages.language.langid import DEFAULT_MODEL as model_path
    if not model_path.exists():
        pytest.skip("language-ID model not bundled in this checkout")
    model = fasttext.load_model(str(model_path))
    for it in _items("wrong_language"):
        labels, _ = model.predict(FMT[it["file"]].answer(_rec(it)).replace("\n", " "))
        assert labels[0] == f"__label__{it['lang']}", it
    for it in _items("wrong_target_language"):
        labels, _ = model.predict(_rec(it)["response"])
        assert labels[0] != "__label__en"


def test_placeholder_inputs_and_role_order():
    for it in _items("placeholder_input"):
        assert _rec(it)["input"] == it["value"] in GEN._NOINPUT
    for it in _items("role_order"):
        roles = [t["from"] for t in _rec(it)["conversations"] if t["from"] != "system"]
        if it["style"] == "starts_with_assistant":
            assert roles[0] == "gpt"
        else:
            assert any(a == b == "human" for a, b in zip(roles, roles[1:]))
    for it in _items("no_assistant_turn"):
        rec = _rec(it)
        turns = rec.get("conversations") or rec.get("messages")
        assert all(t.get("from", t.get("role")) not in ("gpt", "assistant") for t in turns)


# ---- the tokenizer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(SAMPLE / "tokenizer"), local_files_only=True)
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    return tok


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 4096
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    for t in ("<|im_start|>", "<|im_end|>"):
        assert t in tokenizer.all_special_tokens
        ids = tokenizer(f"x{t}y", add_special_tokens=False).input_ids
        assert tokenizer.convert_tokens_to_ids(t) in ids  # one token, never split
    assert tokenizer("hello").input_ids[0] == tokenizer.bos_token_id


def test_tokenizer_round_trips_sample_text(tokenizer):
    texts = []
    for rel, recs in RAW.items():
        f = FMT[rel]
        good = [r for r, err in recs.values() if not err][:40]
        texts += [f.prompt(r) for r in good] + [f.answer(r) for r in good]
    texts += sum(GEN._WRONG_LANGUAGE.values(), [])
    enc = tokenizer(texts, add_special_tokens=False)
    for text, ids in zip(texts, enc.input_ids):
        assert tokenizer.decode(ids) == text
    # Byte-level BPE with a 4k vocabulary: English news text compresses to ~2.5 characters a token.
    rel = "raw/summarize_messages.jsonl.gz"
    english = [FMT[rel].answer(r) for r, err in RAW[rel].values() if not err and r["messages"][-1]["role"] == "assistant"][:50]
    n_tok = sum(len(x) for x in tokenizer(english, add_special_tokens=False).input_ids)
    assert sum(len(t) for t in english) / n_tok > 2.2


def test_tokenizer_chat_template_masks_assistant_turns(tokenizer):
    msgs = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    text = tokenizer.decode(ids)
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
    supervised = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert supervised == "The capital of France is Paris.<|im_end|>"


def test_no_unplanted_near_duplicates():
    """MinHash LSH over word 5-grams of each whole record: every pair at Jaccard >= 0.7 is a
    planted duplicate pair, or two records that both carry a planted answer defect (refusals,
    placeholders and wrong-language answers come from small pools)."""
    datasketch = pytest.importorskip("datasketch")
    planted_pairs, defective = set(), set()
    for kind, d in DEFECTS["defects"].items():
        for it in d["items"]:
            defective.add((it["file"], _loc(it)))
            if "duplicate_of" in it:
                o = it["duplicate_of"]
                planted_pairs.add(frozenset([(it["file"], _loc(it)), (o["file"], _loc(o))]))
    sets, lsh = {}, datasketch.MinHashLSH(threshold=0.6, num_perm=64)
    for rel, recs in RAW.items():
        for loc, (rec, err) in recs.items():
            if err:
                continue
            try:
                text = FMT[rel].text(rec)
            except (KeyError, StopIteration):  # no assistant turn
                continue
            s = {" ".join(x) for x in GEN.shingles(text)}
            m = datasketch.MinHash(num_perm=64, seed=1)
            m.update_batch([x.encode() for x in s])
            sets[(rel, loc)] = s
            lsh.insert((rel, loc), m)
            for other in lsh.query(m):
                if other == (rel, loc):
                    continue
                j = len(s & sets[other]) / len(s | sets[other])
                pair = frozenset([(rel, loc), other])
                if j >= 0.7 and pair not in planted_pairs:
                    assert (rel, loc) in defective and other in defective, (pair, round(j, 3))


def test_readme_counts_match_ground_truth():
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for kind, d in DEFECTS["defects"].items():
        row = re.search(rf"^\| `{kind}` \| (\d+) \| ([\d.]+)% \|", readme, re.M)
        assert row, f"README has no row for {kind}"
        assert (int(row.group(1)), float(row.group(2))) == (d["count"], round(d["rate"] * 100, 2)), kind
    for rel, f in DEFECTS["files"].items():
        row = re.search(rf"^\| `{re.escape(rel)}` \|.*\| (\d+) \| (\d+) \|$", readme, re.M)
        assert row and (int(row.group(1)), int(row.group(2))) == (f["records"], f["malformed"]), rel


def test_project_reader_quarantines_exactly_the_malformed_inputs():
    """The record origins in defects.json are the ones curate's reader gives, and it
    quarantines exactly the planted malformed inputs."""
    from curate.read.readers import read_source
    from curate.read.sources import SourceConfig

    def csv_end_lines(rel):
        # A CSV row spans several lines; a reader may name it by its first line (as
        # defects.json does) or by its last (csv's line_num). Accept either.
        r = csv.reader(io.StringIO((SAMPLE / rel).read_text(encoding="utf-8"), newline=""))
        next(r)
        ends = []
        for _ in r:
            ends.append(r.line_num)
        return ends

    for rel, f in DEFECTS["files"].items():
        cfg = SourceConfig(name=rel.split("/")[1].split(".")[0], path=rel, format=f["format"],
                           task=None if "task_field" in f else f["task"])
        got = read_source(cfg, SAMPLE)
        origin = (lambda it: {it["origin"], f"{rel}:{ends[it['index']]}"}) if rel.endswith(".csv") else (lambda it: {it["origin"]})
        ends = csv_end_lines(rel) if rel.endswith(".csv") else None
        quarantined = {f"{q['file']}:{q['line']}" for q in got.quarantine}
        planted = [it for it in _items("malformed") if it["file"] == rel]
        assert len(quarantined) == len(planted) and all(origin(it) & quarantined for it in planted), rel
        origins = set(got.table["origin"].to_list())
        for kind, d in DEFECTS["defects"].items():
            if kind != "malformed":
                assert all(origin(it) & origins for it in d["items"] if it["file"] == rel), kind
        assert got.table.height == f["parsed"]


def test_normalize_makes_the_after_normalize_duplicates_identical(tmp_path):
    """`duplicate_after_normalize` means what it says with curate's own normalize stage, and
    the planted unicode noise comes out clean."""
    import polars as pl

    from curate.read.readers import read_source
    from curate.read.sources import SourceConfig
    from curate.stages.base import StageContext
    from curate.stages.normalize import Config, Normalize

    tables = []
    for rel, f in DEFECTS["files"].items():
        if rel.endswith(".csv"):
            continue  # origins of multi-line CSV rows are reader-specific; covered above
        cfg = SourceConfig(name=rel.split("/")[1].split(".")[0], path=rel, format=f["format"],
                           task=None if "task_field" in f else f["task"])
        tables.append(read_source(cfg, SAMPLE).table)
    ctx = StageContext(run_dir=tmp_path, config_dir=SAMPLE, seed=0, stage_dir=tmp_path / "n")
    kept = Normalize(Config(), ctx).process(pl.concat(tables)).kept
    ids = dict(zip(kept["origin"].to_list(), kept["id"].to_list()))
    pairs = [it for it in _items("duplicate_after_normalize") if not it["file"].endswith(".csv")]
    assert pairs and all(ids[it["origin"]] == ids[it["duplicate_of"]["origin"]] for it in pairs)
    msgs = dict(zip(kept["origin"].to_list(), kept["messages"].to_list()))
    for it in _items("unicode_noise"):
        if it["origin"] in msgs:
            text = "".join(m["content"] for m in msgs[it["origin"]])
            assert not re.search("[\u200b\x07\r]", text), it
