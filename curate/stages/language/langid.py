"""fastText language identification with the 176-language model shipped in
curate/stages/language/resources (lid.176.ftz, CC BY-SA 3.0, Facebook AI Research): offline after a plain
install, no download on first use.

The model is loaded once per process and path (a lock guards the first load, so threads
share one copy); predictions are batched (fastText's `predict` takes a list and runs the
loop in C++). fastText needs single-line input, so newlines become spaces first.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

DEFAULT_MODEL = Path(__file__).parent / "resources" / "lid.176.ftz"
_LOCK = threading.Lock()
_MODELS: dict[str, object] = {}


def load_model(path: str | Path | None = None):
    key = str(Path(path or DEFAULT_MODEL).resolve())
    model = _MODELS.get(key)
    if model is None:
        with _LOCK:
            model = _MODELS.get(key)
            if model is None:
                import fasttext

                if not Path(key).is_file():
                    raise FileNotFoundError(f"no fastText model at {key}")
                model = fasttext.load_model(key)
                _MODELS[key] = model
    return model


@lru_cache(maxsize=8)
def labels(path: str | None = None) -> frozenset[str]:
    """Language codes the model can answer (ISO 639-1 where one exists, else 639-2/3)."""
    return frozenset(lab.removeprefix("__label__") for lab in load_model(path).get_labels())


def predict(texts: list[str], path: str | Path | None = None, batch_size: int = 10000) -> tuple[list[str], list[float]]:
    """Top-1 language and its probability for each text, in one batched call per chunk."""
    model = load_model(path)
    langs: list[str] = []
    scores: list[float] = []
    for i in range(0, len(texts), batch_size):
        chunk = [t.replace("\n", " ").replace("\r", " ") for t in texts[i:i + batch_size]]
        labs, probs = model.predict(chunk, k=1)
        langs.extend(lab[0].removeprefix("__label__") if lab else "" for lab in labs)
        scores.extend(float(min(p[0], 1.0)) if len(p) else 0.0 for p in probs)
    return langs, scores
