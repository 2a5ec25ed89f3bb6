"""Every flag of every job (and of every benchmark) has one line of help and shows its default.

Each entry point is called with `--help`; the parser it builds is caught at `parse_args` and
walked before anything runs, so no model, no Ray and no file is touched.
"""

from __future__ import annotations

import argparse
import importlib

import pytest

from jobs.bench import BENCHES

JOBS = {
    "jobs.split": "cli",
    "jobs.score": "cli",
    "jobs.filter": "cli",
    "jobs.caption": "cli",
    "jobs.encode": "cli",
    "jobs.curate": "cli",
    "jobs.train": "cli",
    "jobs.sample": "cli",
    "jobs.check": "main",
    "jobs.demo": "main",
    "jobs.status": "main",
    "jobs.report.build": "main",
}
ENTRIES = [(m, f, []) for m, f in JOBS.items()] + [("jobs.bench", "cli", [b]) for b in BENCHES]


class _Caught(Exception):
    pass


def _parser_of(module: str, fn: str, argv: list[str], monkeypatch) -> argparse.ArgumentParser:
    got = []

    def catch(self, *a, **k):
        got.append(self)
        raise _Caught

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        pytest.skip(f"{module} not importable here: {e}")
    with pytest.raises(_Caught):
        getattr(mod, fn)([*argv, "--help"])
    return got[0]


def _shows_default(p: argparse.ArgumentParser, a: argparse.Action) -> bool:
    if (
        a.required
        or a.default in (None, argparse.SUPPRESS)
        or isinstance(a, argparse._StoreTrueAction | argparse._StoreFalseAction)
    ):
        return True  # nothing to show: required, no default, or an on/off switch
    if "%(default)" in a.help or "default" in a.help.lower():
        return True
    return issubclass(p.formatter_class, argparse.ArgumentDefaultsHelpFormatter)


@pytest.mark.parametrize(
    "module,fn,argv", ENTRIES, ids=[f"{m}{' ' + a[0] if a else ''}" for m, _, a in ENTRIES]
)
def test_every_flag_has_help_and_its_default(module, fn, argv, monkeypatch):
    p = _parser_of(module, fn, argv, monkeypatch)
    bad = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
            continue  # --help itself; hidden old spellings
        name = "/".join(a.option_strings) or a.dest
        if not a.help or not a.help.strip():
            bad.append(f"{name}: no help")
        elif "\n" in a.help.strip():
            bad.append(f"{name}: help is more than one line")
        elif not _shows_default(p, a):
            bad.append(f"{name}: default {a.default!r} not shown")
    assert not bad, f"{module} {' '.join(argv)}: " + "; ".join(bad)
