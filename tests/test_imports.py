"""DESIGN.md: imports go one way (curate <- captioner <- latents <- jobs); only jobs/ imports ray;
latents/dit imports only latents and torch (plus the standard library and numerics)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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


def _files(pkg: str):
    return sorted((REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_import_direction(pkg):
    bad = {str(f.relative_to(REPO)): sorted(_imports(f) & FORBIDDEN[pkg]) for f in _files(pkg)}
    if pkg == "latents":
        for f in _files("latents/dit"):
            bad[str(f.relative_to(REPO))] = sorted(_imports(f) & DIT_FORBIDDEN)
    assert not {k: v for k, v in bad.items() if v}


def test_the_checker_sees_violations(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import ray\nfrom jobs.adapter import init_ray\n")
    assert {"ray", "jobs"} <= _imports(f)
