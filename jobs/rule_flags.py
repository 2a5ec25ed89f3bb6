"""`--rule` and `--filters`: filter rules from the command line and a file, on score, filter and curate.

The text is parsed by `curate/decisions/rules.py` into the same FilterConfig the presets hold; a bad
rule exits 2 with the rule, the value and the fix, before Ray starts.
"""

from __future__ import annotations

import argparse

from curate.decisions import rules
from curate.decisions.filters import FilterConfig


def add_rule_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="RULE",
        help="edit the preset's filters (repeatable): 'aesthetic>=5.0', 'aesthetic top 80%%', "
        "'nsfw off', 'near_dup_cosine=0.98'; replaces the preset's rule of the same column and "
        f"kind; columns: {', '.join(rules.COLUMNS)}",
    )
    p.add_argument(
        "--filters",
        default=None,
        metavar="RULES.toml",
        help="a TOML file of rules (rules = [...], replace, near_dup_cosine, exact_dedup), "
        "applied before --rule",
    )


def filters_from_args(a: argparse.Namespace, base: FilterConfig) -> FilterConfig:
    """The preset's filters edited by --filters, then by each --rule (exit 2 on a bad one)."""
    return rules.build(base, a.rule, a.filters)


def edited(a: argparse.Namespace) -> bool:
    return bool(a.rule or a.filters)
