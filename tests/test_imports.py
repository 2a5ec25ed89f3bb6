"""DESIGN.md: imports go one way (curate <- captioner <- latents <- jobs); only jobs/ imports ray;
latents/dit imports only latents and torch (plus the standard library and numerics); and no two
modules of the repo import each other, directly or through others (imports under
`if TYPE_CHECKING:` and inside functions count too: a circle is a circle)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("curate", "captioner", "latents", "jobs", "tests")
FORBIDDEN = {
    "curate": {"captioner", "latents", "jobs", "ray"},
    "captioner": {"latents", "jobs", "ray"},
    "latents": {"jobs", "ray"},
}
DIT_FORBIDDEN = {"curate", "captioner", "jobs", "ray", "av", "cv2", "transformers", "diffusers", "open_clip"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(pkg: str, root: Path = REPO):
    return sorted((root / pkg).rglob("*.py"))


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The repo module `name` refers to: itself, or its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """module -> the repo modules it imports (`from pkg import sub` names the submodule)."""
    files = {_module_of(f, root): f for p in packages for f in _files(p, root)}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                r = _resolve(t, modules)
                # important: a package's own __init__ is not an edge of its submodules (Python
                # imports the parent first anyway); `from jobs.report import html` is an edge to
                # jobs.report.html, not to jobs.report.
                if r and r != mod and not mod.startswith(r + "."):
                    edges.add(r)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative DFS, O(modules + edges))."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_import_direction(pkg):
    bad = {str(f.relative_to(REPO)): sorted(_imports(f) & FORBIDDEN[pkg]) for f in _files(pkg)}
    if pkg == "latents":
        for f in _files("latents/dit"):
            bad[str(f.relative_to(REPO))] = sorted(_imports(f) & DIT_FORBIDDEN)
    assert not {k: v for k, v in bad.items() if v}


def test_ray_only_in_jobs():
    outside = [f for f in REPO.rglob("*.py")
               if not {".venv", "jobs", "tests"} & set(f.relative_to(REPO).parts) and "ray" in _imports(f)]
    assert not outside, f"only jobs/ imports ray (tests may start clusters); found it in {outside}"


def test_no_import_circles():
    assert find_cycle(import_graph()) is None


def test_the_checker_sees_violations(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import ray\nfrom jobs.runtime.adapter import init_ray\n")
    assert {"ray", "jobs"} <= _imports(f)


def test_the_checker_sees_circles(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from pkg.sub.b import y\n")
    (tmp_path / "pkg" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("def f():\n    import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub"] == {"pkg.sub.b"}  # a package importing its own submodule is fine
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (tmp_path / "pkg" / "a.py").write_text("")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
