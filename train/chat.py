"""`curate chat`: talk to the trained model through the chat template it was trained with.

The prompt is the conversation so far rendered by the exported tokenizer's chat template
(the run's template: train/export.py ships it) with the generation prompt, tokenized with
add_special_tokens=False exactly as the renderer tokenized the shards; the reply streams
token by token and stops at the end-of-turn id(s) of the exported generation_config."""
from __future__ import annotations

from train.generate import stream
from train.load import Trained


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reply(trained: Trained, messages: list[dict], on_text, max_new_tokens: int = 256, temperature: float = 0.0,
          seed: int = 0, task: str | None = None) -> str:
    """Stream the assistant's next turn to `on_text`; return it as text (end-of-turn cut)."""
    if trained.kind == "per_task":
        names = trained.adapter_names
        if task is None and len(names) == 1:
            task = next(iter(names))
        if task not in names:
            raise ValueError(f"this run has one adapter per task: choose one with --task ({', '.join(sorted(names))})")
        trained.model.set_adapter(names[task])
    ids = stream(trained.model, trained.tokenizer, chat_prompt(trained.tokenizer, messages), trained.stop_ids, on_text,
                 max_new_tokens, temperature, seed)
    return trained.tokenizer.decode(ids, skip_special_tokens=True)
