"""The house rules of the layout (ARCHITECTURE.md), checked on the source:

- every module imports (nothing left behind by a move);
- no import circle among the project's modules, counting imports inside functions too;
- no module imports another module's private (`_name`) names;
- every arrow points one way: cli -> pipeline -> stages / render / read -> contract, a stage
  never imports another stage, and train/ meets curation only through `curate.contract`;
- pyproject.toml lists every package, so a wheel carries all of them.
"""
from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curate", "train")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            out.append((mod, names, node.lineno))
            # `from pkg import submodule` imports the submodule too
            out += [(f"{mod}.{n}", [], node.lineno) for n in names if f"{mod}.{n}" in MODULES]
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def _project_target(mod: str) -> str | None:
    while mod and mod not in MODULES:
        mod = mod.rsplit(".", 1)[0] if "." in mod else ""
    return mod or None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    if name.endswith("__main__"):
        pytest.skip("`python -m curate` runs the command on import")
    if name.startswith("curate.pipeline.ray"):
        pytest.importorskip("ray")
    importlib.import_module(name)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, _, _ in _imports(m, p):
            t = _project_target(target)
            # a package's __init__ importing its own submodules is not a circle through the package
            if t and t != m and not (t.startswith(m + ".")):
                graph[m].add(t)
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    bad = []
    for m, p in MODULES.items():
        for target, names, line in _imports(m, p):
            bad += [f"{p.relative_to(ROOT)}:{line}: from {target} import {n}"
                    for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def _layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[0] == "train":
        return "train"
    if len(parts) == 1:
        return "curate"
    if parts[1] == "stages" and len(parts) > 2 and parts[2] not in ("base", "common"):
        return f"stages.{parts[2]}"  # one stage kind
    return parts[1]


# what each part may import (besides itself); `curate` is the package root (__version__)
ALLOWED = {
    "contract": {"contract", "curate"},
    "read": {"contract", "read", "curate"},
    "stages": {"contract", "read", "stages", "curate"},            # the registry, base, common
    "render": {"contract", "read", "render", "curate"},
    "pipeline": {"contract", "read", "stages", "render", "pipeline", "curate"},
    "look": {"contract", "read", "stages", "render", "look", "curate"},
    "cli": None,                                                      # the command line orchestrates all
    "curate": None,
    "train": {"contract", "train"},
}


def test_dependencies_point_one_way():
    bad = []
    for m, p in MODULES.items():
        src = _layer(m)
        allowed = ALLOWED.get(src.split(".")[0])
        for target, _, line in _imports(m, p):
            t = _project_target(target)
            if t is None:
                continue
            dst = _layer(t)
            if allowed is None or dst == src:
                continue
            if src.startswith("stages.") and dst.startswith("stages."):
                bad.append(f"{p.relative_to(ROOT)}:{line}: stage {src} imports stage {dst}")
                continue
            if dst.split(".")[0] not in allowed and not (dst.startswith("stages.") and "stages" in allowed
                                                         and src in ("pipeline", "look")):
                bad.append(f"{p.relative_to(ROOT)}:{line}: {src} imports {t}")
    assert not bad, "\n".join(bad)


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    on_disk = {".".join(f.parent.relative_to(ROOT).parts) for pkg in PACKAGES for f in (ROOT / pkg).rglob("__init__.py")}
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert {p for p in listed if not p.startswith("curate_templates")} - on_disk == set()
