"""`curate chat RUN`: the trained adapter (or merged model) of a run, interactive or one-shot."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("chat")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", "prompt", default=None, help="One user message: print the reply and exit.")
@click.option("--system", default=None, help="A system message before the conversation.")
@click.option("--merged", is_flag=True, help="Use RUN/train/merged (written by --merge) instead of the adapter.")
@click.option("--task", default=None, help="With per-task adapters: the task whose adapter answers.")
@click.option("--base-model", default=None, help="Base model directory (when the run's own is not on this machine).")
@click.option("--max-new-tokens", default=256, show_default=True, help="Longest reply, in tokens.")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed (temperature > 0).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--threads", type=int, default=None, help="CPU threads for torch.")
def chat_cmd(run_dir, prompt, system, merged, task, base_model, max_new_tokens, temperature, seed, device, threads):
    """Chat with the model trained in RUN_DIR; replies stream and stop at the template's end of turn.

    Interactive: an empty line or /exit quits, /reset starts a new conversation."""
    from train.chat import reply
    from train.data import DataError
    from train.load import load_trained

    try:
        trained = load_trained(Path(run_dir), base_model, merged=merged, device=device, threads=threads)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    start = [{"role": "system", "content": system}] if system else []

    def answer(messages):
        try:
            text = reply(trained, messages, lambda s: click.echo(s, nl=False), max_new_tokens, temperature, seed, task)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo()
        return text

    if prompt is not None:
        answer([*start, {"role": "user", "content": prompt}])
        return
    messages = list(start)
    click.echo(f"chatting with {trained.folder} (stops at {trained.tokenizer.convert_ids_to_tokens(trained.stop_ids)}); "
               f"/reset, /exit")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip() or line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": answer(messages)})
