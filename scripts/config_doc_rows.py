#!/usr/bin/env python3
"""Print the docs/config.md rows a config section is missing, drafted from the dataclass:
the default and the field's `# comment`. Run after adding a config key, paste the rows
into docs/config.md, and edit the meaning; tests/test_docs_config.py fails until every key
is documented exactly once.

    python scripts/config_doc_rows.py            # missing rows, by section
    python scripts/config_doc_rows.py --write    # append them to their sections (then edit)
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.cli.config_reference import config_sections, expected_doc_keys  # noqa: E402
from curate.cli.config_reference import documented_keys  # noqa: E402


def field_comments(cls) -> dict[str, str]:
    """{field: comment} from a dataclass's source: a trailing `# comment` on the field's
    line, or the comment lines directly above it."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out, pending = {}, []
    lines = src.splitlines()
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    trailing = {t.start[0]: t.string.lstrip("# ").strip() for t in toks if t.type == tokenize.COMMENT}
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("#"):
            pending.append(s.lstrip("# ").strip())
            continue
        name = s.split(":", 1)[0].strip() if ":" in s else None
        if name and name.isidentifier() and not s.startswith(("def ", "class ", "@", "return", "if ")):
            text = trailing.get(no) if no in trailing and not s.startswith("#") else None
            out[name] = " ".join(pending + ([text] if text else []))
        pending = []
    return out


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "none" if f.default is None else f"`{f.default!r}`".replace("'", '"')
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
        return f"`{v!r}`" if v not in ([], {}) else ("`[]`" if v == [] else "`{}`")
    return "(required)"


def insert_rows(page: str, section: str, rows: list[str]) -> str:
    """`page` with `rows` appended to the table of `## section` (the section and its table
    added at the end when the page has none)."""
    lines = page.rstrip("\n").split("\n")
    try:
        start = lines.index(f"## {section}")
    except ValueError:
        return "\n".join(lines + ["", f"## {section}", "", "| key | default | meaning |", "| --- | --- | --- |", *rows]) + "\n"
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    last_row = max((i for i in range(start, end) if lines[i].startswith("|")), default=end - 1)
    return "\n".join(lines[: last_row + 1] + rows + lines[last_row + 1:]) + "\n"


def main() -> int:
    page_path = ROOT / "docs" / "config.md"
    documented = documented_keys(page_path)
    write = "--write" in sys.argv[1:]
    page = page_path.read_text(encoding="utf-8")
    missing = 0
    sections = config_sections()
    for title, keys in expected_doc_keys().items():
        cls = sections.get(title)
        if cls is None:  # the shared stage keys: their rows are written by hand
            continue
        have = documented.get(title, {})
        comments = field_comments(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        rows = [k for k in keys if k not in have]
        if rows:
            lines = [f"| `{k}` | {default_of(fields[k])} | {comments.get(k) or '?'} |" for k in rows]
            missing += len(lines)
            if write:
                page = insert_rows(page, title, lines)
            print(f"## {title}", *lines, "", sep="\n")
    if write and missing:
        page_path.write_text(page, encoding="utf-8")
    return 1 if missing and not write else 0


if __name__ == "__main__":
    raise SystemExit(main())
