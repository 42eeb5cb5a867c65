"""Chat templates: find them (built-in name, `.jinja` path, or the tokenizer's own), compile
them once in Jinja's ImmutableSandboxedEnvironment, and render conversations while recording
the character spans of `{% generation %}` blocks.

Hugging Face's chat-template convention is followed exactly (same environment options,
globals, `tojson`, and the same way of tracking generation spans), so rendered text and
masks equal `tokenizer.apply_chat_template(...)`'s. One deliberate difference: reaching an
unsafe attribute (`''.__class__`, `cycler.__init__`) raises `TemplateSecurityError` at once,
where plain Jinja returns a silent undefined that only fails when used further: a template
that tries is refused, never half-rendered.

Bounded: a template is code from wherever the user's tokenizer came from, so every render
runs under two limits (`[render] template_time_limit`, `template_max_chars`; defaults far
above what a real template needs) and fails with `TemplateLimitError`, never a hang or an
out-of-memory:
- size: the output so far is counted block by block; the operators that can blow a value up
  (`*`, `**`, `+`, `%`) are intercepted and refused before they build a value over the limit
  (`'a'*10**9`, `2**10**10`, doubling a string in a loop); so are filter and string-method
  calls whose integer arguments exceed it (`'a'|center(10**9)`, `'a'.ljust(10**9)`), and
  any filter or method result over it;
- time and memory: one watchdog thread per process watches the renders in progress and,
  past the deadline or when the process has grown by more than 64 bytes per allowed
  character during the render (values kept in `{% set %}` blocks, lists built in loops),
  stops the render from inside its thread (`PyThreadState_SetAsyncExc`: delivered between
  bytecodes, so it stops pure-template loops such as nested `range(99999)` or iterating a
  long string, but not one long C call; the size checks keep C calls short). The memory
  watch reads /proc/self/statm (Linux); elsewhere only time and sizes are bounded. It
  looks every 50 ms, so a render allocating very fast may overshoot by what it allocates
  in that time. Recursion (`RecursionError`) and any other Python
  exception a template raises on one conversation become a `TemplateError` too, so the
  renderer drops that record (`template_error`) and the run goes on.
Trade-off: a format width inside a string (`'{:>999999999}'.format(x)`) is not parsed, so
it allocates before the result check refuses it (one string of that width, once).

Deterministic: `strftime_now` (Llama-3.1/3.2 templates call it) returns the template's fixed
`date` (the run's recorded date), never the clock."""
from __future__ import annotations

import ctypes
import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date as _date_type
from datetime import datetime, timezone
from pathlib import Path

BUILTIN_SUFFIX = ".jinja"
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """A chat template could not be found, compiled or rendered."""


class TemplateSecurityError(TemplateError):
    """A chat template tried to reach Python internals."""


class TemplateLimitError(TemplateError):
    """A render ran past its time limit or built a value past its size limit."""


DEFAULT_TIME_LIMIT = 10.0  # seconds per render; a real template takes well under a millisecond
DEFAULT_MAX_CHARS = 32_000_000  # characters per render (output or any one value built)


def parse_date(value: str | None) -> datetime:
    """The fixed datetime `strftime_now` returns: an ISO date or datetime, or None for
    today (UTC, at midnight, so that it is the same all day)."""
    if value is None:
        today = datetime.now(timezone.utc).date()
        return datetime(today.year, today.month, today.day)
    try:
        d = datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"not an ISO date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS): {value!r}") from None
    return d.replace(tzinfo=None)


# --------------------------------------------------------------------------- the time watchdog


def _rss() -> int | None:
    """This process's resident memory in bytes (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


try:
    import os as _os

    _PAGE = _os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096


class _Watchdog:
    """One daemon thread per process: renders register (thread id, deadline, memory budget);
    past its deadline, or when the process's resident memory has grown by more than the
    budget since the render began (seen at the watchdog's first look at it), a render gets
    `_RenderTimeout` raised inside its thread. Registering is a dict assignment under a lock
    (no thread per render, no system call per render)."""

    POLL = 0.05

    def __init__(self):
        self.lock = threading.Lock()
        self.active: dict[int, list] = {}  # thread id -> [deadline, fired (None|"time"|"memory"), rss0, budget]
        self.thread: threading.Thread | None = None

    def _loop(self):
        while True:
            time.sleep(self.POLL)
            if not self.active:
                continue
            now, rss = time.monotonic(), _rss()
            with self.lock:
                for tid, slot in self.active.items():
                    if slot[1] is not None:
                        continue
                    if slot[2] is None:
                        slot[2] = rss
                    why = "time" if now > slot[0] else None
                    if why is None and rss is not None and slot[2] is not None and rss - slot[2] > slot[3]:
                        why = "memory"
                    if why is not None:
                        slot[1] = why
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                                   ctypes.py_object(_RenderTimeout))

    def start(self, seconds: float, memory_budget: int) -> int:
        tid = threading.get_ident()
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="curate-template-watchdog", daemon=True)
                self.thread.start()
            deadline = time.monotonic() + seconds if seconds and seconds > 0 else float("inf")
            self.active[tid] = [deadline, None, None, memory_budget]
        return tid

    def stop(self, tid: int) -> str | None:
        """Unregister; the limit that fired ("time" or "memory") or None. A stop fired but not
        yet delivered is cleared here, so it can never surface after the render returned."""
        with self.lock:
            slot = self.active.pop(tid, None)
            if slot is not None and slot[1] is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
                return slot[1]
        return None


def memory_budget(max_chars: int) -> int:
    """How much the process may grow during one render: 64 bytes per allowed character
    (a str holds up to 4 per character, and a template may keep several values alive),
    at least 256 MiB so that other threads' allocations never trip it."""
    return max(256 << 20, 64 * max_chars)


class _RenderTimeout(BaseException):
    """Raised asynchronously by the watchdog (a BaseException, so no template-level
    `except Exception` in Jinja's runtime swallows it)."""


_WATCHDOG = _Watchdog()


# --------------------------------------------------------------------------- finding templates


def _builtin_dir():
    """Built-in templates: a checkout's own folder (beside its pyproject.toml) first, so the
    code and templates of one checkout go together even when another checkout is installed
    in editable mode; else the installed `curate_templates` package (a wheel)."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "templates" / "chat").is_dir():
        return root / "templates" / "chat"
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


def _make_environment(max_chars: int = DEFAULT_MAX_CHARS, when: datetime | None = None):
    import jinja2
    import jinja2.compiler
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

    def too_big(what: str):
        raise TemplateLimitError(f"{what} would exceed the size limit of {max_chars:,} characters "
                                 "(render.template_max_chars)")

    def check_args(name, args, kwargs):
        for a in (*args, *kwargs.values()):
            if type(a) is int and a > max_chars:
                too_big(f"{name}(..., {a}, ...)")

    def check_result(name, value):
        if isinstance(value, (str, list, tuple)) and len(value) > max_chars:
            too_big(f"the result of {name}")
        return value

    sized = (str, list, tuple)

    class BoundedCodeGenerator(jinja2.compiler.CodeGenerator):
        """`a ~ b` (Jinja's string concatenation) through a size-checked join."""

        def visit_Concat(self, node, frame):
            self.write("environment.curate_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    def curate_join(seq):
        parts = [str(x) for x in seq]
        if sum(map(len, parts)) > max_chars:
            too_big("a ~ concatenation")
        return "".join(parts)

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Raise on the first unsafe attribute instead of returning a silent undefined;
        refuse operators and calls that would build a value over the size limit."""

        intercepted_binops = frozenset(["*", "**", "+", "%"])
        code_generator_class = BoundedCodeGenerator

        def unsafe_undefined(self, obj, attribute):
            raise TemplateSecurityError(
                f"chat template tried to access attribute {attribute!r} of a {type(obj).__name__!r} object; "
                "templates may not reach Python internals"
            )

        def call_binop(self, context, operator, left, right):
            if operator == "+":  # the common case (every template concatenates): kept short
                out = left + right
                if type(out) in sized and len(out) > max_chars:
                    too_big(f"{type(left).__name__} + {type(right).__name__}")
                return out
            if operator == "*":
                n, seq = (right, left) if isinstance(left, sized) else (left, right)
                if isinstance(seq, sized) and isinstance(n, int) and len(seq) * n > max_chars:
                    too_big(f"{type(seq).__name__} of length {len(seq):,} * {n:,}")
            elif operator == "**":
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                        and left.bit_length() * right > 8 * max_chars:
                    too_big(f"{left} ** {right}")
            elif operator == "%":
                vals = right if isinstance(right, tuple) else (right,)
                check_args("%", vals, {})
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
            if isinstance(getattr(__obj, "__self__", None), (str, list, tuple)):
                check_args(getattr(__obj, "__name__", "method"), args, kwargs)
                return check_result(getattr(__obj, "__name__", "method"),
                                    super().call(__context, __obj, *args, **kwargs))
            return super().call(__context, __obj, *args, **kwargs)

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

    fixed = when if when is not None else parse_date(None)

    def strftime_now(fmt):
        return fixed.strftime(fmt)

    def bounded(name, f):
        skip = 2 if hasattr(f, "jinja_pass_arg") else 1  # (context,) value, then the arguments

        def filt(*args, **kwargs):
            check_args(f"|{name}", args[skip:], kwargs)
            return check_result(f"|{name}", f(*args, **kwargs))

        for attr in ("jinja_pass_arg",):  # pass_context / pass_environment markers
            if hasattr(f, attr):
                setattr(filt, attr, getattr(f, attr))
        return filt

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.curate_join = curate_join
    env.filters["tojson"] = tojson
    env.filters = {k: bounded(k, f) for k, f in env.filters.items()}
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
    time_limit: float = DEFAULT_TIME_LIMIT  # seconds per render (0: no limit)
    max_chars: int = DEFAULT_MAX_CHARS
    date: datetime | None = None  # what strftime_now() sees; None: today (UTC midnight)
    path: str | None = None  # the file it came from, as resolved (None: built-in or tokenizer's)

    def __post_init__(self):
        import jinja2

        self.sha256 = hashlib.sha256(self.text.encode("utf-8")).hexdigest()
        self.has_generation = bool(_GENERATION_RE.search(self.text))
        if self.date is None:
            self.date = parse_date(None)
        elif isinstance(self.date, _date_type) and not isinstance(self.date, datetime):
            self.date = datetime(self.date.year, self.date.month, self.date.day)
        self.uses_date = "strftime_now" in self.text
        self._env = _make_environment(self.max_chars, self.date)
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
        size, limit = 0, self.max_chars
        tid = _WATCHDOG.start(self.time_limit, memory_budget(limit))
        fired = None
        try:
            try:
                with self._tracker.track(blocks, spans):
                    for block in self._template.generate(messages=messages, tools=tools, documents=documents,
                                                         add_generation_prompt=add_generation_prompt, **special_tokens):
                        size += len(block)
                        if size > limit:
                            raise TemplateLimitError(
                                f"chat template {self.name!r}: output exceeds the size limit of {limit:,} characters "
                                "(render.template_max_chars)")
                        blocks.append(block)
            finally:
                fired = _WATCHDOG.stop(tid) or fired
        except _RenderTimeout:
            fired = fired or "time"
        except TemplateSecurityError:
            raise
        except TemplateLimitError as exc:
            if str(exc).startswith("chat template"):
                raise
            raise TemplateLimitError(f"chat template {self.name!r}: {exc}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateSecurityError(f"chat template {self.name!r} was refused by the sandbox: {exc}") from exc
        except jinja2.exceptions.TemplateError as exc:
            raise TemplateError(f"chat template {self.name!r} failed: {exc}") from exc
        except RecursionError:
            raise TemplateError(f"chat template {self.name!r} failed: recursion too deep") from None
        except MemoryError:
            raise TemplateLimitError(f"chat template {self.name!r} ran out of memory") from None
        except Exception as exc:  # a template's own bug on this conversation (1/0, a bad index, ...)
            raise TemplateError(f"chat template {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if fired == "memory":
            raise TemplateLimitError(
                f"chat template {self.name!r} grew the process by more than {memory_budget(limit) >> 20:,} MiB in one "
                "render (64 bytes per character of render.template_max_chars)")
        if fired:
            raise TemplateLimitError(f"chat template {self.name!r} ran past its time limit of {self.time_limit:g} s "
                                     "(render.template_time_limit)")
        return "".join(blocks), spans

    def source(self, base_dir: Path | None = None) -> dict:
        """What the manifest records so the exact template can be found again: the spec as
        written, the file (relative to the config folder when under it), the text, its sha256
        and the date strftime_now() returned (only when the template calls it)."""
        path = None
        if self.path is not None:
            p = Path(self.path).resolve()
            try:
                path = str(p.relative_to(Path(base_dir).resolve())) if base_dir is not None else str(p)
            except ValueError:
                path = str(p)
        return {"spec": self.name, "path": path, "text": self.text, "sha256": self.sha256,
                "date": self.date.isoformat() if self.uses_date else None}


def template_file(spec: str, base_dir: Path | None = None) -> Path | None:
    """The resolved file of a path spec (relative to base_dir), else None."""
    if spec == "tokenizer" or not is_path_spec(spec):
        return None
    p = Path(spec).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p.resolve()


def load_template(spec: str, base_dir: Path | None = None, tokenizer=None, time_limit: float = DEFAULT_TIME_LIMIT,
                  max_chars: int = DEFAULT_MAX_CHARS, date: str | datetime | None = None) -> ChatTemplate:
    name, text = template_source(spec, base_dir, tokenizer)
    f = template_file(spec, base_dir)
    when = parse_date(date) if not isinstance(date, datetime) else date
    return ChatTemplate(name, text, time_limit=time_limit, max_chars=max_chars, date=when,
                        path=str(f) if f is not None else None)


def special_tokens_kwargs(tokenizer) -> dict:
    """What apply_chat_template passes to a template besides messages: the special tokens map."""
    if tokenizer is None:
        return {"bos_token": "<s>", "eos_token": "</s>"}
    return dict(getattr(tokenizer, "special_tokens_map", {}) or {})
