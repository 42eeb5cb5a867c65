"""`curate templates`: list the built-in chat templates, show one, render a conversation
through one (with the loss mask marked)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from curate.render.templates import (TemplateError, builtin_names, builtin_text, describe, load_template,
                                     special_tokens_kwargs, template_source)


def _read_messages(path: Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = json.loads(text.splitlines()[0])  # JSONL: the first record
    if isinstance(data, dict):
        data = data.get("messages") or data.get("conversations")
    if not isinstance(data, list) or not all(isinstance(m, dict) and "role" in m for m in data):
        raise click.BadParameter("expected a JSON list of {role, content} messages (or {\"messages\": [...]})")
    return data


@click.group("templates")
def templates_cli() -> None:
    """Built-in chat templates: list them, show one, render a conversation through one."""


@templates_cli.command("list")
def list_cmd() -> None:
    """List the built-in chat templates."""
    for name in builtin_names():
        click.echo(f"{name:<12} {describe(builtin_text(name))}")


@templates_cli.command("show")
@click.argument("name")
def show_cmd(name: str) -> None:
    """Print a template's Jinja source (built-in name or .jinja path)."""
    try:
        click.echo(template_source(name)[1])
    except TemplateError as exc:
        raise click.ClickException(str(exc))


@templates_cli.command("render")
@click.argument("name")
@click.option("--messages", "messages_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file: a list of {role, content} messages, or {\"messages\": [...]}")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="local tokenizer directory: also show the token ids and the loss mask")
@click.option("--add-generation-prompt", is_flag=True, help="end with the assistant header, as at inference")
@click.option("--train-on", type=click.Choice(["assistant", "last_assistant", "all"]), default="assistant")
def render_cmd(name, messages_file, tokenizer_dir, add_generation_prompt, train_on) -> None:
    """Render a conversation through template NAME; the trained (supervised) part is shown
    between >>> and <<< markers (or in green on a terminal)."""
    messages = _read_messages(messages_file)
    tok = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    try:
        tpl = load_template(name, Path.cwd(), tok)
        text, spans = tpl.render(messages, add_generation_prompt=add_generation_prompt, **special_tokens_kwargs(tok))
    except TemplateError as exc:
        raise click.ClickException(str(exc))
    if train_on == "last_assistant":
        spans = spans[-1:]
    elif train_on == "all":
        spans = [(0, len(text))]
    out, pos = [], 0
    for s, e in spans:
        out.append(click.style(text[pos:s], dim=True))
        out.append(click.style(">>>", fg="green") + click.style(text[s:e], fg="green", bold=True) + click.style("<<<", fg="green"))
        pos = e
    out.append(click.style(text[pos:], dim=True))
    click.echo("".join(out))
    if not tpl.has_generation:
        click.echo("(template has no {% generation %} blocks: the renderer derives masks from turn prefixes)", err=True)
    if tok is not None:
        from curate.render.renderer import Renderer

        r = Renderer(tpl, tok, max_length=10**9, train_on=train_on)
        ex = r.render_batch([messages])[0]
        if ex.error:
            raise click.ClickException(ex.error)
        click.echo(f"\n{len(ex.input_ids)} tokens, {sum(ex.mask)} supervised")
        click.echo(" ".join(f"[{i}]" if m else str(i) for i, m in zip(ex.input_ids, ex.mask)))
