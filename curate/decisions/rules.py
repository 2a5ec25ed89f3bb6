"""Filter rules as text: `--rule 'aesthetic>=5.0'` and `--filters rules.toml` -> a FilterConfig.

The text only edits the existing filter config (`dataclasses.replace`), so the decision code
(`curate/decisions/filters.py`) is the same whichever way the rules came. One rule reads:

  COLUMN>=VALUE  COLUMN<=VALUE      absolute: keep when it holds ("sharpness>=100")
  COLUMN top N%  COLUMN bottom N%   percentile of the run: keep the best N% ("aesthetic top 80%")
  COLUMN off                        drop every rule on COLUMN (e.g. "nsfw off")
  near_dup_cosine=VALUE | off       near-duplicate threshold (cosine of CLIP embeddings)
  exact_dedup=on | off              exact duplicates (same content and span)

A rule replaces the base config's rule of the same column, op and kind (absolute or
percentile) and is added otherwise. The file (TOML) holds

  replace = false        # true: start from no rules instead of the preset's
  rules = ["aesthetic>=5.0", "aesthetic top 80%"]
  near_dup_cosine = 0.95 # or false
  exact_dedup = true

and the `--rule` flags apply after it.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from curate.decisions.filters import CHEAP_COLUMNS, FRAME_COLUMNS, MODEL_COLUMNS, FilterConfig, Rule
from curate.errors import UsageError

COLUMNS = CHEAP_COLUMNS + FRAME_COLUMNS + MODEL_COLUMNS
NEAR = "near_dup_cosine"
EXACT = "exact_dedup"
FORMS = "COLUMN>=VALUE, COLUMN<=VALUE, 'COLUMN top N%', 'COLUMN bottom N%' or 'COLUMN off'"
_ABS = re.compile(r"^\s*([a-z_]+)\s*(>=|<=)\s*([^\s]+)\s*$")
_PCT = re.compile(r"^\s*([a-z_]+)\s+(top|bottom)\s+([^\s%]+)\s*%\s*$")
_OFF = re.compile(r"^\s*([a-z_]+)\s+off\s*$")
_SET = re.compile(r"^\s*(near_dup_cosine|exact_dedup)\s*=\s*([^\s]+)\s*$")
_ON_OFF = {"on": True, "true": True, "off": False, "false": False}


def _bad(flag: str, text: str, fix: str, rule: str | None = None) -> UsageError:
    return UsageError(f"{rule or f'{flag} must be {FORMS}'}, got {text!r}; {fix}")


def _column(flag: str, name: str, text: str) -> str:
    if name in COLUMNS:
        return name
    near = difflib.get_close_matches(name, COLUMNS, n=1)
    hint = f"did you mean {near[0]}?" if near else f"use one of {list(COLUMNS)}"
    raise _bad(flag, text, hint, rule=f"{flag} column must be a score column ({', '.join(COLUMNS)})")


def _number(flag: str, value: str, text: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise _bad(
            flag,
            text,
            "write a finite number, e.g. --rule 'aesthetic>=5.0'",
            rule=f"{flag} value must be a finite number",
        )
    return v


def parse_rule(text: str, flag: str = "--rule") -> tuple[str, Any]:
    """One rule's text -> ("rule", Rule) | ("off", column) | (NEAR, float | None) | (EXACT, bool)."""
    t = text.strip().lower()
    if m := _SET.match(t):
        key, value = m.groups()
        if key == EXACT:
            if value not in _ON_OFF:
                raise _bad(
                    flag,
                    text,
                    "write exact_dedup=on or exact_dedup=off",
                    rule=f"{flag} {EXACT} must be on or off",
                )
            return EXACT, _ON_OFF[value]
        if value in ("off", "false"):
            return NEAR, None
        v = _number(flag, value, text)
        if not -1 <= v <= 1:
            raise _bad(
                flag, text, "e.g. near_dup_cosine=0.95 (or off)", rule=f"{flag} {NEAR} must be in [-1, 1]"
            )
        return NEAR, v
    if m := _OFF.match(t):
        return "off", _column(flag, m.group(1), text)
    if m := _ABS.match(t):
        col, op, value = m.groups()
        return "rule", Rule(_column(flag, col, text), op, threshold=_number(flag, value, text))
    if m := _PCT.match(t):
        col, side, value = m.groups()
        pct = _number(flag, value, text)
        if not 0 < pct <= 100:
            raise _bad(
                flag,
                text,
                "e.g. 'aesthetic top 80%' keeps the best 80%",
                rule=f"{flag} percentage must be in (0, 100]",
            )
        return "rule", Rule(_column(flag, col, text), ">=" if side == "top" else "<=", share=pct / 100)
    raise _bad(
        flag, text, "e.g. --rule 'aesthetic>=5.0' or --rule 'aesthetic top 80%' (quote it in the shell)"
    )


def _same_slot(a: Rule, b: Rule) -> bool:
    return a.column == b.column and a.op == b.op and (a.share is None) == (b.share is None)


def apply_rules(base: FilterConfig, texts: Iterable[str], flag: str = "--rule") -> FilterConfig:
    """`base` edited by each rule text in order (a rule replaces the one in its slot, else is added)."""
    cfg = base
    for text in texts:
        kind, value = parse_rule(text, flag)
        if kind == NEAR:
            cfg = replace(cfg, near_dup_cosine=value)
        elif kind == EXACT:
            cfg = replace(cfg, exact_dedup=value)
        elif kind == "off":
            cfg = replace(cfg, rules=tuple(r for r in cfg.rules if r.column != value))
        else:
            slot = [i for i, r in enumerate(cfg.rules) if _same_slot(r, value)]
            rules = list(cfg.rules)
            if slot:
                rules[slot[0]] = value
            else:
                rules.append(value)
            cfg = replace(cfg, rules=tuple(rules))
    return cfg


def _table_rule(flag: str, entry: Mapping[str, Any]) -> str:
    """A `{column, op, threshold}` or `{column, top|bottom}` TOML table as rule text."""
    col = str(entry.get("column", ""))
    if "threshold" in entry:
        return f"{col}{entry.get('op', '>=')}{entry['threshold']}"
    for side in ("top", "bottom"):
        if side in entry:
            share = float(entry[side])
            return f"{col} {side} {share * 100 if share <= 1 else share}%"
    raise _bad(
        flag,
        dict(entry),
        "give threshold= (with op=) or top=/bottom= (a share, e.g. 0.8)",
        rule=f"{flag} rule tables need column and threshold, top or bottom",
    )


def load_file(path: str | Path, base: FilterConfig, flag: str = "--filters") -> FilterConfig:
    """`base` edited by a rules TOML file (see the module docstring)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError as e:
        raise _bad(
            flag, str(p), "pass the path of a .toml rules file", rule=f"{flag} must be an existing file"
        ) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _bad(flag, f"{p} ({e})", "fix the TOML syntax", rule=f"{flag} must be a TOML file") from e
    unknown = set(doc) - {"replace", "rules", NEAR, EXACT}
    if unknown:
        raise _bad(
            flag,
            f"{p}: {sorted(unknown)}",
            f"use only replace, rules, {NEAR} and {EXACT}",
            rule=f"{flag} keys must be known",
        )
    cfg = replace(base, rules=()) if doc.get("replace", False) else base
    entries = doc.get("rules", [])
    if not isinstance(entries, list):
        raise _bad(
            flag,
            f"{p}: rules = {entries!r}",
            'write rules = ["aesthetic>=5.0", ...]',
            rule=f"{flag} rules must be a list",
        )
    texts = [e if isinstance(e, str) else _table_rule(flag, e) for e in entries]
    cfg = apply_rules(cfg, texts, flag)
    if NEAR in doc:
        v = doc[NEAR]
        cfg = apply_rules(cfg, [f"{NEAR}={'off' if v is False else v}"], flag)
    if EXACT in doc:
        cfg = apply_rules(cfg, [f"{EXACT}={'on' if doc[EXACT] else 'off'}"], flag)
    return cfg


def build(base: FilterConfig, rules: Iterable[str] = (), file: str | None = None) -> FilterConfig:
    """The filters a job runs: `base`, then the file's edits, then each `--rule`."""
    cfg = load_file(file, base) if file else base
    return apply_rules(cfg, rules)


def describe(cfg: FilterConfig) -> list[str]:
    """Every rule as text this module parses back (for --help, status and the report)."""
    out = [r.name.replace(" ", "") if r.share is None else r.name for r in cfg.rules]
    out.append(f"{NEAR}={cfg.near_dup_cosine:g}" if cfg.near_dup_cosine is not None else f"{NEAR}=off")
    out.append(f"{EXACT}={'on' if cfg.exact_dedup else 'off'}")
    return out
