"""Template loading, the sandbox, and the `curate templates` commands."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from curate.cli.templates import templates_cli
from curate.render.templates import (ChatTemplate, TemplateError, TemplateSecurityError, builtin_names, describe,
                                     load_template)
from curate.render.config import RenderConfig
from curate.render.renderer import RenderError, render_examples
from curate.contract.schema import POLARS_SCHEMA
from test_render_tokenizers import get_tokenizer

MSGS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{% for m in messages %}{{ m.__class__.__base__ }}{% endfor %}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ messages.append({'role': 'x'}) }}",  # immutable sandbox: no mutation of the inputs
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_sandbox_refuses_python_internals(text, tmp_path):
    marker = tmp_path / "pwned"
    tpl = ChatTemplate("evil", text.replace("{marker}", str(marker)))
    with pytest.raises(TemplateError) as err:
        tpl.render(MSGS, bos_token="<s>", eos_token="</s>")
    assert isinstance(err.value, TemplateSecurityError) or "unsafe" in str(err.value) or "immutable" in str(err.value)
    assert not marker.exists()


def test_unsafe_attribute_error_is_clear():
    with pytest.raises(TemplateSecurityError, match=r"'__class__'.*Python internals"):
        ChatTemplate("evil", "{{ ''.__class__.__mro__ }}").render(MSGS)


def test_evil_template_stops_a_run_before_any_output(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.jinja").write_text("{{ cycler.__init__.__globals__.os.popen('touch %s') }}" % marker)
    t = __import__("polars").DataFrame([{"id": "a", "source": "s", "task": "t", "messages": MSGS, "meta": "{}",
                                          "origin": "x"}], schema=POLARS_SCHEMA)
    with pytest.raises(RenderError, match="Python internals"):
        render_examples(t, RenderConfig(template="evil.jinja", tokenizer="x"), tmp_path, 0,
                        tokenizer=get_tokenizer("bpe"))
    assert not marker.exists()


def test_syntax_error_and_raise_exception():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("broken", "{% for m in messages %}")
    with pytest.raises(TemplateError, match="boom"):
        ChatTemplate("r", "{{ raise_exception('boom') }}").render(MSGS)


def test_hf_globals_available():
    tpl = ChatTemplate("g", "{{ {'a': 'é'} | tojson }}|{{ strftime_now('%Y') | length }}|"
                            "{% set ns = namespace(n=1) %}{% set ns.n = 2 %}{{ ns.n }}|{{ dict(x=1).x }}")
    assert tpl.render(MSGS)[0] == '{"a": "é"}|4|2|1'


def test_builtins_load_from_package_resources():
    names = builtin_names()
    assert len(names) >= 9
    for n in names:
        tpl = load_template(n)
        assert describe(tpl.text) and tpl.has_generation and len(tpl.sha256) == 64


def test_cli_list_and_render(tmp_path):
    runner = CliRunner()
    res = runner.invoke(templates_cli, ["list"])
    assert res.exit_code == 0 and "llama-3" in res.output and "chatml" in res.output
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"messages": MSGS}))
    res = runner.invoke(templates_cli, ["render", "chatml", "--messages", str(f)])
    assert res.exit_code == 0, res.output
    assert ">>>Hello.<|im_end|><<<" in res.output and "<|im_start|>user\nHi<|im_end|>" in res.output
    res = runner.invoke(templates_cli, ["render", "no-such", "--messages", str(f)])
    assert res.exit_code != 0 and "no built-in chat template" in res.output
    res = runner.invoke(templates_cli, ["show", "gemma"])
    assert res.exit_code == 0 and "<start_of_turn>" in res.output


def test_cli_render_with_tokenizer(tmp_path):
    tok = get_tokenizer("bpe")
    tok.save_pretrained(tmp_path / "tok")
    f = tmp_path / "m.json"
    f.write_text(json.dumps(MSGS))
    res = CliRunner().invoke(templates_cli, ["render", "chatml", "--messages", str(f), "--tokenizer",
                                             str(tmp_path / "tok")])
    assert res.exit_code == 0, res.output
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert f"[{eot}]" in res.output and "supervised" in res.output
