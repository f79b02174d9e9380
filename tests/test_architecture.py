"""The shape of caa_eval: the import graph follows the data flow (no circles, no arrow from a lower floor to a
higher one), and no function is over 60 lines.

Every import counts, also the lazy ones inside functions (they are arrows all the same). Run with `-s` to see
the graph between packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import caa_eval

ROOT = Path(caa_eval.__file__).parent

# Floors of the data flow (DESIGN.md), lowest first; a module may import its own floor and the ones below.
# Adapted to what the code is: the inputs (the embedded model, the data readers) sit below core, because
# extraction reads contrast pairs; finetune (it makes LoRA adapters from data, as extract makes vectors) sits
# below lmeval, which evaluates under an adapter (`peft=`) and records its fingerprint.
FLOORS: list[set[str]] = [
    {"errors", "vocab", "files", "paths"},
    {"models", "data"},
    {"core"},
    {"finetune"},
    {"lmeval"},
    {"judge"},
    {"stats"},
    {"report"},
    {"sweep", "analysis", "demo", "reproduce"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """caa_eval modules `path` imports (resolved to modules, not to names inside them)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("caa_eval") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, name, set(files)) for name, path in sorted(files.items())}


def _floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for i, floor in enumerate(FLOORS):
        if part in floor:
            return i
    raise AssertionError(f"{module}: no floor assigned; add its package to FLOORS")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    def pkg(m: str) -> str:
        return m.split(".")[1] if "." in m else m

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        if m == "caa_eval":
            continue
        out.setdefault(pkg(m), set()).update(pkg(t) for t in targets if pkg(t) != pkg(m) and t != "caa_eval")
    return out


def test_import_graph_has_no_cycles():
    graph = import_graph()
    for package, targets in sorted(_package_graph(graph).items(), key=lambda kv: _floor(f"caa_eval.{kv[0]}")):
        print(f"{package:>9} -> {', '.join(sorted(targets, key=lambda t: _floor(f'caa_eval.{t}')))}")
    assert _cycles(graph) == []


def test_no_import_from_a_lower_floor_to_a_higher_one():
    graph = import_graph()
    upward = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m != "caa_eval"
        for t in targets
        if t != "caa_eval" and _floor(t) > _floor(m)
    )
    assert upward == []


def test_the_checker_sees_a_circle_and_an_upward_arrow():
    fake = {"caa_eval.core.a": {"caa_eval.core.b"}, "caa_eval.core.b": {"caa_eval.core.a"}}
    assert _cycles(fake) == [["caa_eval.core.a", "caa_eval.core.b"]]
    assert _floor("caa_eval.core.hooks") < _floor("caa_eval.lmeval.model") < _floor("caa_eval.cli")


MAX_FUNCTION_LINES = 60
"""The style rule: a function longer than this is split into named steps (CONTRIBUTING.md)."""


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in `source` longer than `limit` lines (decorators excluded)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_no_function_over_60_lines():
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{name} ({lines} lines)"
        for path in sorted(ROOT.rglob("*.py"))
        for name, lines in long_functions(path.read_text())
    ]
    assert offenders == [], "split these into named steps: " + "; ".join(offenders)


def test_the_length_check_counts_a_long_method():
    body = "".join(f"        x{i} = {i}\n" for i in range(60))
    source = f"class A:\n    def short(self):\n        return 1\n\n    def long(self):\n{body}"
    assert long_functions(source) == [("long", 61)]
    assert long_functions(source, limit=61) == []
