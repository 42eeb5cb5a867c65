"""Chat templates: find them (built-in name, `.jinja` path, or the tokenizer's own), compile
them once in Jinja's ImmutableSandboxedEnvironment, and render conversations while recording
the character spans of `{% generation %}` blocks.

Hugging Face's chat-template convention is followed exactly (same environment options,
globals, `tojson`, and the same way of tracking generation spans), so rendered text and
masks equal `tokenizer.apply_chat_template(...)`'s. One deliberate difference: reaching an
unsafe attribute (`''.__class__`, `cycler.__init__`) raises `TemplateSecurityError` at once,
where plain Jinja returns a silent undefined that only fails when used further: a template
that tries is refused, never half-rendered."""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

BUILTIN_SUFFIX = ".jinja"
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """A chat template could not be found, compiled or rendered."""


class TemplateSecurityError(TemplateError):
    """A chat template tried to reach Python internals."""


# --------------------------------------------------------------------------- finding templates


def _builtin_dir():
    """Built-in templates: the installed `curate_templates` package, else the checkout's folder."""
    try:
        from importlib.resources import files

        d = files("curate_templates") / "chat"
        if d.is_dir():
            return d
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "templates" / "chat"


def builtin_names() -> list[str]:
    return sorted(p.name[: -len(BUILTIN_SUFFIX)] for p in _builtin_dir().iterdir() if p.name.endswith(BUILTIN_SUFFIX))


def builtin_text(name: str) -> str:
    f = _builtin_dir() / f"{name}{BUILTIN_SUFFIX}"
    if not f.is_file():
        raise TemplateError(f"no built-in chat template {name!r} (built-in: {', '.join(builtin_names())})")
    return f.read_text(encoding="utf-8")


def describe(text: str) -> str:
    """A template's one-line description: its leading `{# ... #}` comment."""
    m = re.match(r"\s*\{#-?\s*(.*?)\s*-?#\}", text, re.S)
    return m.group(1).splitlines()[0] if m else ""


def is_path_spec(spec: str) -> bool:
    return spec.endswith(".jinja") or "/" in spec or "\\" in spec


def template_source(spec: str, base_dir: Path | None = None, tokenizer=None) -> tuple[str, str]:
    """(name, text) for `render.template`: a built-in name, a path to a `.jinja` file
    (relative to base_dir), or "tokenizer" (the tokenizer's own `chat_template`)."""
    if spec == "tokenizer":
        text = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(text, dict):  # several named templates: the default one
            text = text.get("default")
        if not text:
            raise TemplateError('render.template = "tokenizer", but the tokenizer has no chat_template')
        return "tokenizer", text
    if is_path_spec(spec):
        p = Path(spec).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        if not p.is_file():
            raise TemplateError(f"no chat template file at {p}")
        return str(spec), p.read_text(encoding="utf-8")
    return spec, builtin_text(spec)


# --------------------------------------------------------------------------- the sandbox


def _make_environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTracker(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: records the character span of its body
        in the output rendered so far (the same mechanism as transformers' AssistantTracker)."""

        tags = {"generation"}

        def __init__(self, environment):
            super().__init__(environment)
            self._tracking = ContextVar("curate_generation_tracker", default=None)
            environment.extend(curate_tracker=self)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(lineno)

        def _generation(self, caller):
            rv = caller()
            tracking = self._tracking.get()
            if tracking is not None:
                blocks, spans = tracking
                start = sum(len(b) for b in blocks)
                spans.append((start, start + len(rv)))
            return rv

        @contextmanager
        def track(self, blocks, spans):
            token = self._tracking.set((blocks, spans))
            try:
                yield
            finally:
                self._tracking.reset(token)

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Raise on the first unsafe attribute instead of returning a silent undefined."""

        def unsafe_undefined(self, obj, attribute):
            raise TemplateSecurityError(
                f"chat template tried to access attribute {attribute!r} of a {type(obj).__name__!r} object; "
                "templates may not reach Python internals"
            )

    class TemplateNamespace(jinja2.utils.Namespace):
        # As in transformers: namespaces refuse underscore attributes.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise TemplateSecurityError(f"chat template tried to set attribute {name!r} on a namespace")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson HTML-escapes; chat templates expect plain JSON (as in transformers).
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


@dataclass
class ChatTemplate:
    """A compiled chat template. Compile once per run; `render` per conversation."""

    name: str
    text: str

    def __post_init__(self):
        import jinja2

        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        self.has_generation = bool(_GENERATION_RE.search(self.text))
        self._env = _make_environment()
        try:
            self._template = self._env.from_string(self.text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template {self.name!r} does not compile: {exc} (line {exc.lineno})") from exc
        self._tracker = self._env.curate_tracker

    def render(self, messages: list[dict], add_generation_prompt: bool = False, tools=None, documents=None,
               **special_tokens) -> tuple[str, list[tuple[int, int]]]:
        """(text, generation spans as (start, end) character offsets)."""
        import jinja2

        blocks: list[str] = []
        spans: list[tuple[int, int]] = []
        try:
            with self._tracker.track(blocks, spans):
                for block in self._template.generate(messages=messages, tools=tools, documents=documents,
                                                     add_generation_prompt=add_generation_prompt, **special_tokens):
                    blocks.append(block)
        except TemplateSecurityError:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateSecurityError(f"chat template {self.name!r} was refused by the sandbox: {exc}") from exc
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateError(f"chat template {self.name!r} failed: {exc}") from exc
        return "".join(blocks), spans


def load_template(spec: str, base_dir: Path | None = None, tokenizer=None) -> ChatTemplate:
    name, text = template_source(spec, base_dir, tokenizer)
    return ChatTemplate(name, text)


def special_tokens_kwargs(tokenizer) -> dict:
    """What apply_chat_template passes to a template besides messages: the special tokens map."""
    if tokenizer is None:
        return {"bos_token": "<s>", "eos_token": "</s>"}
    return dict(getattr(tokenizer, "special_tokens_map", {}) or {})
