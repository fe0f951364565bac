"""The package layers, read from the source: who may import whom, no cycles, sizes.

``edgefed`` <- ``drivers`` <- ``edged``, ``serverd``; the two daemons never import each
other; nothing outside ``tests/`` imports ``tests``. ``edgefed.testing`` (the test doubles
that the bench and the demo use too) sits on top: it may import ``drivers`` (the kubelet
stand-in speaks the device plugin's API), and no daemon, driver or shared module imports
it. Every import counts, including those inside functions and ``TYPE_CHECKING`` blocks (a
cycle hidden there is still a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = ("edgefed", "drivers", "edged", "serverd")
# what each part of the tree may import, besides itself and third-party code; a module
# follows the longest key that is a prefix of its dotted name
ALLOWED: dict[str, set[str]] = {
    "edgefed": set(),
    "edgefed.testing": {"edgefed", "drivers"},
    "drivers": {"edgefed"},
    "edged": {"edgefed", "drivers"},
    "serverd": {"edgefed", "drivers"},
    "bench": {"edgefed", "drivers", "edged", "serverd"},
    "packaging": {"edgefed", "drivers", "edged", "serverd"},
    "firmware-images": {"edgefed", "drivers"},
}
FIRST_PARTY = {*PACKAGES, "bench", "tests"}
MAX_CLASS_LINES = 300
MAX_MODULE_LINES = 450
LONG_MODULE_REASON = "long because"  # a module over the limit says why in its docstring


def python_files(root: Path, part: str) -> Iterator[Path]:
    for path in sorted((root / part).rglob("*.py")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p in {"cache", "build", "__pycache__"} for p in rel.parts):
            continue
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        yield path


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to absolute names."""
    here = module_name(root, path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _may_import(module: str, name: str, allowed: dict[str, set[str]]) -> bool:
    part = max((key for key in allowed if _within(module, key)), key=len)
    if name.split(".")[0] not in FIRST_PARTY:
        return True
    if any(_within(name, key) for key in allowed if key != part and _within(key, part)):
        return False  # a layer above this one, nested in it (edgefed.testing in edgefed)
    return _within(name, part) or any(_within(name, may) for may in allowed[part])


def violations(root: Path, allowed: dict[str, set[str]]) -> list[str]:
    """``file: imports module`` for every import of a first-party part the rule forbids."""
    out = []
    for part in {key.split(".")[0] for key in allowed}:
        for path in python_files(root, part):
            module = module_name(root, path)
            for name in sorted(imported_modules(root, path)):
                if not _may_import(module, name, allowed):
                    out.append(f"{path.relative_to(root)}: imports {name}")
    return sorted(set(out))


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(root, p): p for part in PACKAGES for p in python_files(root, part)}
    return {
        name: {m for m in imported_modules(root, path) if m in modules and m != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def oversized(root: Path) -> list[str]:
    out = []
    for part in PACKAGES:
        for path in python_files(root, part):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            rel = path.relative_to(root)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_CLASS_LINES:
                        out.append(f"{rel}: class {node.name} has {lines} lines")
            lines = len(path.read_text(encoding="utf-8").splitlines())
            doc = ast.get_docstring(tree) or ""
            if lines > MAX_MODULE_LINES and LONG_MODULE_REASON not in doc:
                out.append(f"{rel}: {lines} lines and no '{LONG_MODULE_REASON}' in its docstring")
    return out


def test_the_tree_keeps_the_layers() -> None:
    assert violations(REPO, ALLOWED) == []


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    for part in ("edgefed", "drivers", "edged", "serverd", "bench"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "__init__.py").write_text("")
    (tmp_path / "serverd" / "ok.py").write_text("import json\nfrom edgefed import errors\n")
    (tmp_path / "serverd" / "bad.py").write_text("def f():\n    from edged.offload import outbox\n")
    (tmp_path / "drivers" / "sub").mkdir()
    (tmp_path / "drivers" / "sub" / "__init__.py").write_text("from ...edged import x\n")
    (tmp_path / "edgefed" / "t.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    import drivers.registry\n"
    )
    (tmp_path / "bench" / "b.py").write_text("from tests.support import paths\n")
    (tmp_path / "edgefed" / "testing").mkdir()
    (tmp_path / "edgefed" / "testing" / "double.py").write_text("import drivers.registry\n")
    (tmp_path / "edgefed" / "wire.py").write_text("from edgefed.testing import double\n")
    assert violations(tmp_path, ALLOWED) == [
        "bench/b.py: imports tests.support",
        "bench/b.py: imports tests.support.paths",
        "drivers/sub/__init__.py: imports edged",
        "drivers/sub/__init__.py: imports edged.x",
        "edgefed/t.py: imports drivers.registry",
        "edgefed/wire.py: imports edgefed.testing",
        "edgefed/wire.py: imports edgefed.testing.double",
        "serverd/bad.py: imports edged.offload",
        "serverd/bad.py: imports edged.offload.outbox",
    ]


def test_no_import_cycle_between_modules() -> None:
    assert cycles(import_graph(REPO)) == []


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_classes_and_modules_stay_small() -> None:
    assert oversized(REPO) == []


@pytest.mark.parametrize("lines", [MAX_CLASS_LINES, MAX_CLASS_LINES + 1])
def test_an_oversized_class_is_reported(tmp_path: Path, lines: int) -> None:
    (tmp_path / "edgefed").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(lines - 1))
    (tmp_path / "edgefed" / "big.py").write_text(f'"""Doc."""\nclass Big:\n{body}\n')
    expected = [] if lines == MAX_CLASS_LINES else [f"edgefed/big.py: class Big has {lines} lines"]
    assert oversized(tmp_path) == expected
