"""Imports go one way (curate <- captioner <- latents <- jobs); only jobs/ imports ray;
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
                return [*path[path.index(nxt) :], nxt]
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
    outside = [
        f
        for f in REPO.rglob("*.py")
        if not {".venv", "jobs", "tests"} & set(f.relative_to(REPO).parts) and "ray" in _imports(f)
    ]
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
    (tmp_path / "pkg" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import b\n"
    )
    (tmp_path / "pkg" / "sub" / "b.py").write_text("def f():\n    import pkg.a\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub"] == {"pkg.sub.b"}  # a package importing its own submodule is fine
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (tmp_path / "pkg" / "a.py").write_text("")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None


# the job entry points (`python -m jobs.X`; the report's is jobs/report/__main__.py, its package is
# the library that curate also calls): each is parse -> config -> main(cfg) over shared runtime and
# library code, so none imports another; jobs.demo runs the pipeline the way a user
# does (curate, then train, then sample) and the benchmarks drive the jobs they measure
JOBS = {
    f"jobs.{j}"
    for j in (
        "split",
        "score",
        "filter",
        "caption",
        "encode",
        "curate",
        "train",
        "sample",
        "check",
        "status",
        "report.__main__",
        "demo",
    )
}
DEMO_RUNS = {"jobs.curate", "jobs.train", "jobs.sample"}


def test_entry_points_never_import_each_other():
    graph = import_graph()
    assert set(graph) >= JOBS, sorted(JOBS - set(graph))  # every entry point is still where the test looks
    entry = JOBS | {m for m in graph if m.startswith("jobs.bench")}
    bad = {m: sorted(graph[m] & (entry - {m})) for m in sorted(JOBS - {"jobs.demo"})}
    assert not {m: v for m, v in bad.items() if v}, "move what they share into jobs/runtime/"
    assert graph["jobs.demo"] & entry <= DEMO_RUNS
    library = [m for m in graph if m.startswith("jobs.") and m not in entry and m != "jobs"]
    assert library and not {m: sorted(graph[m] & entry) for m in library if graph[m] & entry}


def _private_uses(path: Path, modules: set[str]) -> list[str]:
    """`from repo.mod import _x` and `mod._x` where `mod` was imported from the repo."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{node.module}.{a.name}")
                elif f"{node.module}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name in modules}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    """A name one module needs from another is public: `_x` is that module's own business."""
    modules = set(import_graph())
    bad = {
        str(f.relative_to(REPO)): u
        for p in PACKAGES[:-1]
        for f in _files(p)
        if (u := _private_uses(f, modules))
    }
    assert not bad


def test_the_private_name_check_sees_them(tmp_path):
    f = tmp_path / "x.py"
    f.write_text(
        "from curate.decisions import filters\nfrom curate.scores.score import _hidden\nfilters._steps(1)\n"
    )
    assert sorted(_private_uses(f, {"curate.decisions.filters", "curate.scores.score"})) == [
        "curate.scores.score._hidden",
        "filters._steps",
    ]
