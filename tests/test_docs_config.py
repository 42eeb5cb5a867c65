"""docs/config.md documents every config key exactly once, and nothing the code does not
accept (the reference cannot drift from the typed config dataclasses)."""
from pathlib import Path

from curate.cli.config_reference import expected_doc_keys
from curate.cli.config_reference import documented_keys

ROOT = Path(__file__).resolve().parents[1]


def _expected() -> dict[str, set[str]]:
    return {title: set(keys) for title, keys in expected_doc_keys().items()}


def test_every_config_key_is_documented_exactly_once():
    documented = documented_keys(ROOT / "docs" / "config.md")
    expected = _expected()
    problems = []
    for title, keys in expected.items():
        have = documented.get(title)
        if have is None:
            problems.append(f"section `## {title}` missing")
            continue
        problems += [f"{title}: `{k}` not documented" for k in sorted(keys - set(have))]
        problems += [f"{title}: `{k}` documented but not a config key" for k in sorted(set(have) - keys)]
        problems += [f"{title}: `{k}` documented {n} times" for k, n in sorted(have.items()) if n > 1]
    problems += [f"section `## {t}` documents keys of no config section" for t, ks in documented.items()
                 if t not in expected and ks]
    assert not problems, "docs/config.md is out of date (python scripts/config_doc_rows.py):\n" + "\n".join(problems)


def test_the_checker_sees_a_missing_and_an_extra_key(tmp_path):
    """The check is real: a page without a key, or with one too many, is caught."""
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    broken = page.replace("| `seed` | `0` |", "| `seeed` | `0` |", 1)
    assert broken != page
    (tmp_path / "config.md").write_text(broken, encoding="utf-8")
    doc = documented_keys(tmp_path / "config.md")
    assert "seed" not in doc["[run]"] and "seeed" in doc["[run]"]
