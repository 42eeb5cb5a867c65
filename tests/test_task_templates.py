"""Multi-task instruction templates: every built-in loads, phrasings vary per record but
are deterministic, missing fields name the field, and a bad template is refused."""
from collections import Counter
from types import SimpleNamespace

import pytest

from curate.read.task_templates import available_templates, build_messages, load_task_template, template_fields


def cfg(name, **fields):
    return SimpleNamespace(task_template=name, fields=fields)


def test_builtins_load_with_several_phrasings():
    names = available_templates()
    assert {"translation", "qa", "summarization", "code_generation", "code_explanation"} <= set(names)
    for n in names:
        assert len(load_task_template(n).phrasings) >= 4


def test_translation_uses_field_mapping_and_varies_phrasing():
    c = cfg("translation", source="en", target="fr", target_lang="lang")
    users = []
    for i in range(200):
        msgs = build_messages({"en": f"Hello {i}", "fr": f"Bonjour {i}", "lang": "French"}, c, i)
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert f"Hello {i}" in msgs[0]["content"] and msgs[1]["content"] == f"Bonjour {i}"
        users.append(msgs[0]["content"].replace(f"Hello {i}", "X"))
    counts = Counter(users)
    assert len(counts) >= 4  # several phrasings are used
    assert max(counts.values()) < 120  # none dominates


def test_deterministic_for_index_and_content():
    c = cfg("qa")
    rec = {"question": "Why is the sky blue?", "answer": "Rayleigh scattering."}
    assert build_messages(rec, c, 7) == build_messages(dict(rec), c, 7)


def test_optional_slots_select_matching_phrasings():
    c = cfg("qa")
    for i in range(50):
        with_ctx = build_messages({"question": "Q?", "answer": "A", "context": "CTX"}, c, i)
        assert "CTX" in with_ctx[0]["content"]
        no_ctx = build_messages({"question": "Q?", "answer": "A", "context": "  "}, c, i)
        assert "CTX" not in no_ctx[0]["content"] and "Passage" not in no_ctx[0]["content"]


def test_missing_or_empty_required_field_raises_keyerror_with_field_name():
    c = cfg("summarization", document="text", summary="abstract")
    with pytest.raises(KeyError) as e:
        build_messages({"text": "a long document"}, c, 0)
    assert e.value.args[0] == "abstract"
    with pytest.raises(KeyError) as e:
        build_messages({"text": "", "abstract": "s"}, c, 0)
    assert e.value.args[0] == "text"


def test_nested_fields_and_non_string_values():
    c = cfg("qa", question="q.text", answer="a")
    msgs = build_messages({"q": {"text": "2+2?"}, "a": 4}, c, 0)
    assert "2+2?" in msgs[0]["content"] and msgs[1]["content"] == "4"


def test_user_template_file_and_refusals(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('required = ["x", "y"]\n[[phrasings]]\nuser = "Do {{ x }}"\nassistant = "{{ y }}"\n')
    msgs = build_messages({"x": "it", "y": "done"}, cfg(str(good)), 3)
    assert msgs[0]["content"] == "Do it"
    bad = tmp_path / "bad.toml"
    bad.write_text('required = ["x"]\n[[phrasings]]\nuser = "{{ nope }}"\nassistant = "{{ x }}"\n')
    with pytest.raises(ValueError, match="undeclared"):
        load_task_template(str(bad))
    with pytest.raises(ValueError, match="unknown task template"):
        load_task_template("no_such_task")


def test_sandbox_blocks_python_internals(tmp_path):
    evil = tmp_path / "evil.toml"
    evil.write_text('required = ["x"]\n[[phrasings]]\nuser = "{{ x.__class__.__mro__ }}"\nassistant = "{{ x }}"\n')
    with pytest.raises(Exception):
        build_messages({"x": "a"}, cfg(str(evil)), 0)


def test_template_fields_names_consumed_record_fields():
    c = cfg("translation", source="en", target="fr")
    assert template_fields(c) == {"en", "fr", "source_lang", "target_lang"}
