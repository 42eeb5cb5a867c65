"""Column-wise JSONL parsing (issue 20) gives exactly what per-line `json.loads` gives:
same records, ids, meta bytes, origins and quarantine, on tricky and on random input."""
import json

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.contract.schema import conversation_id, recompute_ids
from curate.read import readers
from curate.read.readers import read_source
from curate.read.sources import SourceConfig


def both(tmp_path, text: str, monkeypatch, **kw):
    f = tmp_path / "x.jsonl"
    f.write_text(text)
    cfg = SourceConfig(name="s", path=str(f), **kw)
    fast = read_source(cfg, tmp_path, batch_rows=kw.pop("batch_rows", 65536))
    with monkeypatch.context() as m:
        m.setattr(readers, "_fast_flat", lambda lines, *a: (None, list(range(len(lines)))))
        slow = read_source(cfg, tmp_path)
    return fast, slow


def same(fast, slow):
    assert fast.table.equals(slow.table), (fast.table.to_dicts(), slow.table.to_dicts())
    assert fast.quarantine == slow.quarantine
    assert fast.format == slow.format


TRICKY = [
    '{"instruction": "Say \\"hi\\"\\n\\ttab \\u0001 é 😀 \\ud83d\\ude00", "input": "", "output": "hi"}',
    '{"instruction":"compact","output":"x","id":7,"ok":true,"tag":"a/b"}',
    '{"instruction": "mixed", "output": 5}',  # a number where a string belongs: quarantined
    '{"instruction": "dup", "output": "first", "output": "second"}',
    '{"instruction": "null optional", "input": null, "output": "y"}',
    '{"instruction": "null meta", "output": "y", "id": null}',
    '{"instruction": "float meta", "output": "y", "score": 1.5}',
    '{"instruction": "nested meta", "output": "y", "extra": {"a": [1, 2]}}',
    '{"output": "no instruction"}',
    '{"instruction": "", "input": "only input", "output": "z"}',
    '{"instruction": "sys", "system": "Be brief.", "output": "ok"}',
    '{"instruction": "hist", "history": [["a", "b"]], "output": "ok"}',
    '{"instruction": "lone", "output": "\\ud800"}',
    '{"instruction": "key in value", "output": "the \\"output\\": 3 text"}',
    '  {  "instruction" :  "spaced" ,  "output" :"s" }  ',
    '[1, 2]',
    '{"instruction": "big int", "output": "y", "n": 123456789012345678901234567890}',
    '{bad json',
    '{"instruction": "int-ish", "output": "y", "n": 1}',
    '{"instruction": "bool in int", "output": "y", "n": true}',
    '{"instruction": "float in int", "output": "y", "n": 1.5}',
    '{"instruction": "exp in int", "output": "y", "n": 1e2}',
    '{"instruction": "int as float", "output": "y", "n": 1.0}',
    '{"instruction": "crlf", "output": "c"}\r',
]


def test_tricky_lines_match_per_line_parsing(tmp_path, monkeypatch):
    text = "\n".join(TRICKY) + "\n\n"
    fast, slow = both(tmp_path, text, monkeypatch, format="alpaca")
    same(fast, slow)
    assert {q["line"] for q in fast.quarantine} >= {"3", "9", "16", "18"}


def test_clean_block_takes_the_column_wise_path(tmp_path, monkeypatch):
    lines = [json.dumps({"instruction": f"q{i} é\n", "input": "ctx" if i % 2 else "", "output": f"a{i}",
                         "id": f"r{i}", "n": i, "flag": i % 3 == 0}) for i in range(50)]
    calls = []
    real = readers._fast_flat
    monkeypatch.setattr(readers, "_fast_flat", lambda *a: calls.append(1) or real(*a))
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(lines) + "\n")
    fast = read_source(SourceConfig(name="s", path=str(f), format="alpaca", system="Sys."), tmp_path)
    monkeypatch.setattr(readers, "_fast_flat", lambda lines, *a: (None, list(range(len(lines)))))
    slow = read_source(SourceConfig(name="s", path=str(f), format="alpaca", system="Sys."), tmp_path)
    assert calls and fast.table.equals(slow.table)
    assert fast.table["meta"][0] == '{"flag": true, "id": "r0", "n": 0}'
    assert fast.table["id"][3] == conversation_id(fast.table["messages"][3].to_list())


def test_dolly_task_field_and_prompt_completion(tmp_path, monkeypatch):
    dolly = [{"instruction": "Translate", "context": "Hallo", "response": "Hello", "category": " translate "},
             {"instruction": "Q", "context": "", "response": "A", "category": "  "},
             {"instruction": "Q2", "response": "A2", "category": "open_qa", "src": "x"}]
    fast, slow = both(tmp_path, "".join(json.dumps(r) + "\n" for r in dolly), monkeypatch, format="dolly")
    same(fast, slow)
    assert fast.table["task"].to_list() == ["translate", "open_qa"]
    pc = [{"prompt": "p", "completion": "c", "k": 1}, {"prompt": "p2", "completion": "c2", "k": 2}]
    fast, slow = both(tmp_path, "".join(json.dumps(r) + "\n" for r in pc), monkeypatch, format="prompt_completion",
                      task="code")
    same(fast, slow)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False, width=32),
                    st.text(max_size=8), st.lists(st.integers(), max_size=2))
record = st.dictionaries(st.sampled_from(["instruction", "input", "output", "system", "id", "n", "tag", "é k"]),
                         st.one_of(st.text(max_size=12), scalars), max_size=7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(record, min_size=1, max_size=12), st.booleans())
def test_random_records_match(tmp_path, monkeypatch, recs, compact):
    kw = {"separators": (",", ":")} if compact else {}
    text = "".join(json.dumps(r, ensure_ascii=not compact, **kw) + "\n" for r in recs)
    fast, slow = both(tmp_path, text, monkeypatch, format="alpaca")
    same(fast, slow)


def test_recompute_ids_matches_conversation_id():
    msgs = [[{"role": "user", "content": "a\"b\\\n\x01é😀", "extra": None},
             {"role": "assistant", "content": "", "extra": '{"tool_calls": []}'}],
            [{"role": "user", "content": None, "extra": None}], []]
    df = pl.DataFrame({"messages": msgs}, schema={"messages": readers.POLARS_SCHEMA["messages"]})
    assert recompute_ids(df)["id"].to_list() == [conversation_id(m) for m in msgs]


MSG_TRICKY = [
    '{"messages": [{"role": "user", "content": "Hi \\u00e9?"}, {"role": "assistant", "content": "Hello."}], "id": 3}',
    '{"messages": [{"role": " Human ", "content": "Hi?"}, {"role": "GPT", "content": null}]}',
    '{"messages": [{"role": "user", "content": "Hi?"}, {"role": "wizard", "content": "x"}]}',
    '{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": 5}]}',
    '{"messages": [{"role": "user", "content": "Hi?", "role": "assistant"}]}',
    '{"messages": []}',
    '{"messages": null}',
    '{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}',
    '{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
    '{"messages": [{"role": "user", "content": "q", "name": "ann"}, {"role": "assistant", "content": "a"}]}',
]


def test_messages_column_wise_matches_per_line(tmp_path, monkeypatch):
    text = "\n".join(MSG_TRICKY) + "\n"
    for system in (None, "Be kind."):
        fast, slow = both(tmp_path, text, monkeypatch, format="messages", system=system)
        same(fast, slow)
    mapped = '{"messages": [{"role": " Human ", "content": "Hi?"}, {"role": "GPT", "content": "Yo."}]}'
    first = '{"messages": [{"role": "user", "content": "Hi \\u00e9?"}, {"role": "assistant", "content": "Hello."}]}'
    plain = "\n".join([first, mapped, MSG_TRICKY[8]]) + "\n"
    calls = []
    real = readers._fast_flat

    def spy(*a):
        out = real(*a)
        calls.append(out[0].height if out[0] is not None else 0)
        return out

    monkeypatch.setattr(readers, "_fast_flat", spy)
    (tmp_path / "p.jsonl").write_text(plain)
    read_source(SourceConfig(name="s", path=str(tmp_path / "p.jsonl"), format="messages"), tmp_path)
    assert calls == [3]  # all three plain records went column-wise


turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "Human", "x", None, 3])},
                             optional={"content": st.one_of(st.text(max_size=10), st.none(), st.integers()),
                                       "name": st.text(max_size=3)})
msg_record = st.fixed_dictionaries({"messages": st.lists(turn, max_size=4)},
                                   optional={"id": st.one_of(st.text(max_size=5), st.integers(0, 9)), "n": scalars})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(msg_record, min_size=1, max_size=10))
def test_random_messages_match(tmp_path, monkeypatch, recs):
    text = "".join(json.dumps(r) + "\n" for r in recs)
    fast, slow = both(tmp_path, text, monkeypatch, format="messages")
    same(fast, slow)


def test_lines_the_schema_sample_missed_match(tmp_path, monkeypatch):
    """The decoder's schema comes from a sample of the block: a line outside the sample
    with another type, another key or a coercible value must still come out as per-line."""
    clean = [json.dumps({"instruction": f"q{i}", "output": f"a{i}", "n": i, "tag": "t", "ok": True})
             for i in range(600)]
    odd = ['{"instruction": "q", "output": "a", "n": true, "tag": "t", "ok": true}',
           '{"instruction": "q", "output": "a", "n": 1.5, "tag": "t", "ok": true}',
           '{"instruction": "q", "output": "a", "n": 1e2, "tag": "t", "ok": true}',
           '{"instruction": "q", "output": "a", "n": 1.0, "tag": "t", "ok": true}',
           '{"instruction": "q", "output": "a", "n": 3, "tag": 7, "ok": true}',
           '{"instruction": "q", "output": "a", "n": 3, "tag": "t", "ok": 1}',
           '{"instruction": "q", "output": 5, "n": 3, "tag": "t", "ok": true}',
           '{"instruction": "q", "output": "a", "n": 3, "tag": "t", "ok": true, "new": "key"}',
           '{"instruction": "q", "output": "a", "n": 3, "tag": {"x": "y"}, "ok": true}',
           '{"instruction": "q", "output": "a", "n": 3, "tag": ["t"], "ok": true}']
    for line in odd:
        lines = list(clean)
        lines[1] = line  # 600 // 256 = 2: the sample takes even lines only
        fast, slow = both(tmp_path, "\n".join(lines) + "\n", monkeypatch, format="alpaca")
        same(fast, slow)
