"""Bounded templates (#15): hostile templates stop within their time and size limits with a
TemplateError; a template error on one conversation drops only that conversation
(`template_error`); strftime_now is fixed to the run's recorded date; the manifest records the
template (file relative to the config folder, text, sha256) so an exporter ships the right one."""
from __future__ import annotations

import json
import re
import os
import textwrap
from pathlib import Path

import pytest

from curate.contract.typed_config import ConfigError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.render.config import RenderConfig
from curate.render.renderer import render_examples
from curate.render.templates import ChatTemplate, TemplateError, TemplateLimitError, load_template, parse_date
from helpers import pair, records
from test_render_tokenizers import get_tokenizer

SAMPLE_TOKENIZER = Path(__file__).resolve().parent.parent / "sample_data" / "tokenizer"
MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

HOSTILE_TIME = {
    "nested range loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "nested loops over strings": "{% for i in 'a'*90000 %}{% for j in 'b'*90000 %}{% endfor %}{% endfor %}",
}
HOSTILE_SIZE = {
    "string times a billion": "{{ 'a'*10**9 }}",
    "list times a billion": "{% set x = [1]*10**9 %}",
    "huge power": "{{ 2**(10**10) }}",
    "doubling in a loop": "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "center filter": "{{ 'a'|center(10**9) }}",
    "string method": "{{ 'a'.ljust(10**9) }}",
    "percent width": "{{ '%*s' % (10**9, 'a') }}",
    "output": "{% for i in range(99999) %}{{ 'x' * 5000 }}{% endfor %}",
}
HOSTILE_OTHER = {
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "range of 10**10": "{% for i in range(10**10) %}{% endfor %}",
    "division by zero": "{{ 1 / 0 }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TIME))
def test_time_limit_stops_endless_loops(name):
    t = ChatTemplate(name, HOSTILE_TIME[name], time_limit=0.3)
    with pytest.raises(TemplateLimitError, match="time limit of 0.3 s"):
        t.render(MSGS)
    # the template (and the thread) renders normally afterwards: no stray timeout left behind
    ok = ChatTemplate("ok", "{{ messages[0].content }}", time_limit=0.3)
    for _ in range(200):
        assert ok.render(MSGS)[0] == "hi"


@pytest.mark.parametrize("name", sorted(HOSTILE_SIZE))
def test_size_limit_refuses_before_building(name):
    t = ChatTemplate(name, HOSTILE_SIZE[name], max_chars=1_000_000, time_limit=5)
    with pytest.raises(TemplateLimitError, match="size limit of 1,000,000 characters"):
        t.render(MSGS)


@pytest.mark.parametrize("name", sorted(HOSTILE_OTHER))
def test_other_failures_are_template_errors(name):
    with pytest.raises(TemplateError, match=re.escape(f"chat template {name!r}")):
        ChatTemplate(name, HOSTILE_OTHER[name], time_limit=5).render(MSGS)


def test_limits_leave_real_templates_alone():
    # every built-in renders a long conversation untouched by the defaults
    long = [m for i in range(200) for m in pair(f"question {i} " * 50, f"answer {i} " * 50)]
    for name in ("chatml", "llama-3", "qwen-2.5", "mistral", "gemma"):
        text, spans = load_template(name).render(long, bos_token="<s>", eos_token="</s>")
        assert len(spans) == 200 and "answer 199" in text


def test_strftime_now_is_the_recorded_date():
    t = load_template("chatml")  # a built-in that does not use the date
    assert not t.uses_date and t.source()["date"] is None
    src = "{{ strftime_now('%d %b %Y') }}|{{ messages[0].content }}"
    a = ChatTemplate("d", src, date=parse_date("2024-07-23"))
    assert a.render(MSGS)[0] == "23 Jul 2024|hi" and a.uses_date
    assert a.source()["date"] == "2024-07-23T00:00:00"


def _table(convs):
    return records(convs, source="s", task="qa", origin="f")


def test_one_hostile_record_is_dropped_and_the_rest_rendered(tmp_path):
    # the template loops forever, or builds a huge value, only on some conversations
    (tmp_path / "t.jinja").write_text(textwrap.dedent("""\
        {%- for m in messages %}
        {%- if 'LOOP' in m.content %}{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}
        {%- if 'HUGE' in m.content %}{{ 'a' * 10**9 }}{% endif %}
        {%- if 'DEEP' in m.content %}{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}{% endif %}
        {%- if 'RANGE' in m.content %}{% for i in range(10**10) %}{% endfor %}{% endif %}
        {{- '<|im_start|>' + m.role + '\\n' }}
        {%- if m.role == 'assistant' %}{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}
        {%- else %}{{ m.content + '<|im_end|>' }}{% endif %}
        {{- '\\n' }}
        {%- endfor %}"""))
    convs = [pair(f"question {i}", f"answer {i}") for i in range(6)]
    convs += [pair("LOOP here", "a"), pair("HUGE here", "b"), pair("DEEP here", "c"), pair("RANGE here", "d")]
    cfg = RenderConfig(template="t.jinja", tokenizer="unused", template_time_limit=0.3, template_max_chars=100_000)
    cfg.validate()
    out = render_examples(_table(convs), cfg, tmp_path, seed=0, tokenizer=get_tokenizer("bpe"))
    assert out.examples.height == 6
    d = out.dropped
    assert d.height == 4 and set(d["_reason"]) == {"template_error"}
    detail = dict(zip([m[0]["content"] for m in d["messages"].to_list()], d["_detail"]))
    assert "time limit of 0.3 s" in detail["LOOP here"]
    assert "size limit of 100,000" in detail["HUGE here"]
    assert "recursion" in detail["DEEP here"]
    assert "Range too big" in detail["RANGE here"]


def test_render_config_limit_keys_checked():
    for kw, key in [({"template_time_limit": -1}, "template_time_limit"),
                    ({"template_max_chars": 10}, "template_max_chars"), ({"date": "yesterday"}, "date")]:
        with pytest.raises(ConfigError) as err:
            RenderConfig(tokenizer="x", **kw).validate()
        assert err.value.key == key


DATED = """{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}
{%- if m.role == 'system' %}Today: {{ strftime_now('%d %b %Y') }}. {% endif %}
{%- if m.role == 'assistant' %}{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}
{%- else %}{{ m.content + '<|im_end|>' }}{% endif %}{{ '\\n' }}{%- endfor %}"""


@pytest.mark.skipif(not SAMPLE_TOKENIZER.is_dir(), reason="sample tokenizer missing")
def test_manifest_records_the_template_and_date(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "tpl").mkdir(parents=True)
    (conf / "tpl" / "mine.jinja").write_text(DATED)
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q {i}"},
                          {"role": "assistant", "content": f"a {i}"}]} for i in range(8)]
    (conf / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (conf / "pipeline.toml").write_text(textwrap.dedent(f"""
        [run]
        output_dir = "run"
        [[sources]]
        name = "d"
        path = "data.jsonl"
        format = "messages"
        task = "qa"
        [render]
        template = "tpl/mine.jinja"
        tokenizer = "{SAMPLE_TOKENIZER}"
        max_length = 128
        date = "2024-07-23"
        """))
    m = run_pipeline(load_config(conf / "pipeline.toml"))
    r = m["render"]
    assert r["template_path"] == "tpl/mine.jinja" and r["template_text"] == DATED
    assert r["date"] == "2024-07-23" and r["stats"]["notes"] and "2024-07-23" in r["stats"]["notes"][0]
    # the trainer's exporter finds this template from any working directory, not chatml
    from transformers import AutoTokenizer

    from train.export import chat_template

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tok = AutoTokenizer.from_pretrained(str(SAMPLE_TOKENIZER), local_files_only=True)
    assert chat_template(m, tok) == DATED
    # the pinned date is what was rendered
    from curate.contract.shards import open_split

    ex = open_split(conf / "run", "train")
    assert "Today: 23 Jul 2024" in tok.decode(ex.column("input_ids")[0].as_py())
    assert os.path.basename(r["template_path"]) == "mine.jinja"


def test_memory_watch_stops_values_kept_out_of_the_output():
    # each value is under the size limit and nothing is output: only the memory watch sees it
    src = "{% set x %}{% for i in range(99999) %}{{ 'x' * 900000 }}{% endfor %}{% endset %}done"
    t = ChatTemplate("hoard", src, max_chars=1_000_000, time_limit=60)
    if not Path("/proc/self/statm").is_file():
        pytest.skip("the memory watch needs /proc (Linux)")
    with pytest.raises(TemplateLimitError, match="grew the process by more than 256 MiB"):
        t.render(MSGS)


def test_date_recorded_only_when_set_or_read(tmp_path):
    from datetime import datetime, timezone

    (tmp_path / "dated.jinja").write_text(DATED)
    t = _table([[{"role": "system", "content": "Hi."}, *pair("q", "a")]])
    tok = get_tokenizer("bpe")
    plain = render_examples(t, RenderConfig(tokenizer="x"), tmp_path, seed=0, tokenizer=tok)
    assert plain.fingerprints["date"] is None and plain.stats["notes"] == []  # the manifest stays the same every day
    dated = render_examples(t, RenderConfig(template="dated.jinja", tokenizer="x"), tmp_path, seed=0, tokenizer=tok)
    today = datetime.now(timezone.utc).date().isoformat()
    assert dated.fingerprints["date"] == today and "set render.date to pin it" in dated.stats["notes"][0]
    pinned = render_examples(t, RenderConfig(tokenizer="x", date="2020-01-02"), tmp_path, seed=0, tokenizer=tok)
    assert pinned.fingerprints["date"] == "2020-01-02"
