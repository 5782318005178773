"""The named experiments under ``configs/experiment/``: discovery and ``nodex list``.

An experiment is a ``# @package _global_`` YAML file; its first comment line (after the ``@package`` line) is its
one-line description. Everything that needs the list (``nodex list``, ``nodex reproduce``, the report) reads the
files, so a new experiment needs no registration anywhere."""

from __future__ import annotations

import fnmatch
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from nodex.config import CONFIG_DIR
from nodex.report import OneLineParser

EXPERIMENT_DIR = CONFIG_DIR / "experiment"


@dataclass(frozen=True)
class Experiment:
    """One ``configs/experiment/NAME.yaml`` file."""

    name: str
    description: str
    path: Path


def _paragraphs(path: Path) -> list[list[str]]:
    """The paragraphs of a config file's header comment (the ``@package`` line left out)."""
    paragraphs: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if text and not text.startswith("@package"):
            paragraphs[-1].append(text)
        elif not text and paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


def describe(path: Path) -> str:
    """The first comment line of a config file that is not a ``# @package`` directive."""
    paragraphs = _paragraphs(path)
    return paragraphs[0][0] if paragraphs else ""


def header(path: Path) -> str:
    """The whole first paragraph of a config file's header comment (its lines joined), for ``nodex list``."""
    paragraphs = _paragraphs(path)
    return " ".join(paragraphs[0]) if paragraphs else ""


def audit(path: Path) -> str:
    """The header paragraph of a config file that starts with ``Audit`` (its settings checked
    against the authors', deviations fixed or kept and why), its lines joined; ``""`` if none."""
    for lines in _paragraphs(path):
        starts = [i for i, text in enumerate(lines) if text.startswith("Audit")]
        if starts:
            return " ".join(lines[starts[-1]:])
    return ""


def discover(directory: Path | None = None, only: list[str] | None = None) -> list[Experiment]:
    """Every experiment in ``directory`` (default: the package's), sorted by name; ``only`` keeps
    those matching any of the given names or shell patterns (``table1_*``)."""
    directory = EXPERIMENT_DIR if directory is None else Path(directory)
    found = [Experiment(p.stem, describe(p), p) for p in sorted(directory.glob("*.yaml"))]
    if only:
        found = [e for e in found if any(fnmatch.fnmatchcase(e.name, pat) for pat in only)]
    return found


def list_main(argv: list[str]) -> int:
    """``nodex list [PATTERN ...]``: every experiment with its one-line description."""
    parser = OneLineParser(prog="nodex list",
                                     description="List the named experiments (nodex train experiment=NAME).")
    parser.add_argument("patterns", nargs="*", help="names or shell patterns to keep, e.g. 'reflection_*'")
    parser.add_argument("--names", action="store_true", help="print the names only, one per line")
    args = parser.parse_args(argv)
    experiments = discover(only=args.patterns or None)
    if not experiments:
        print("no experiment matches " + " ".join(args.patterns) if args.patterns
              else f"no experiments in {EXPERIMENT_DIR}")
        return 1
    if args.names:
        print("\n".join(e.name for e in experiments))
        return 0
    width = max(len(e.name) for e in experiments)
    columns = max(60, shutil.get_terminal_size((120, 24)).columns)
    for e in experiments:
        text = textwrap.wrap(header(e.path), width=columns - width - 2, break_on_hyphens=False,
                             break_long_words=False) or [""]
        print(f"{e.name:<{width}}  {text[0]}")
        for more in text[1:]:
            print(f"{'':<{width}}  {more}")
    print(f"\n{len(experiments)} experiments; run one with: nodex train experiment=NAME")
    return 0
