"""The reproduction page's pictures: a claim's figures (:attr:`nodex.paper.claims.Claim.figures`) copied
from its runs' ``plots/`` into ``docs/reproduction/``, downscaled and palette-quantised, for the first
seed and for the worst seed of a check that fails on some seeds (that picture is usually the reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from nodex.paper.claims import Claim
from nodex.report import Group

WIDTH = 420    # pixels: two figures side by side on a page
WIDE = 640     # pixels for a multi-panel figure (aspect > 1.4), so its labels stay legible
COLOURS = 64   # palette size: the figures are flat-coloured plots


def figure_name(label: str, name: str, seed: int) -> str:
    """The committed file's name, e.g. ``annuli_vanilla_decision_map_seed3.png``."""
    return f"{label.replace('@', '-')}_{name}_seed{seed}.png"


def shrink(src: Path, dest: Path, colours: int = COLOURS) -> int:
    """Write ``src`` (a PNG) as ``dest``: at most :data:`WIDTH` pixels wide (:data:`WIDE` for a
    multi-panel figure), ``colours`` colours; returns the width written."""
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        width = WIDE if img.width > 1.4 * img.height else WIDTH
        if img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
        return img.width


def copy_figure(run_dir: Optional[Path], label: str, name: str, seed: int,
                dest_dir: Path) -> Optional[tuple[str, int]]:
    """Copy ``run_dir/plots/<name>.png`` into ``dest_dir``; ``(file name, width)``, or ``None`` when
    the run wrote no such figure."""
    if run_dir is None:
        return None
    src = Path(run_dir) / "plots" / f"{name}.png"
    if not src.is_file():
        return None
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = figure_name(label, name, seed)
    return out, shrink(src, dest_dir / out)


def clear(dest_dir: Path, keep: frozenset[str] | set[str] = frozenset(),
          only: frozenset[str] | set[str] | None = None) -> None:
    """Remove the PNGs an earlier page left in ``dest_dir``: those named in ``only`` (the page's own; ``None``:
    every PNG there), except ``keep`` (carried sections' figures)."""
    if dest_dir.is_dir():
        for path in dest_dir.glob("*.png"):
            if path.name not in keep and (only is None or path.name in only):
                path.unlink()


class FigureSink:
    """Copies a claim's figures into ``dest_dir``; writes the page's lines that show them (linked as ``rel``)."""

    def __init__(self, dest_dir: Path, rel: str) -> None:
        self.dest_dir, self.rel = Path(dest_dir), rel.rstrip("/")

    def _run_dir(self, groups: dict[str, Group], label: str, seed: Optional[int]) -> tuple[Optional[Path], int]:
        """The run directory of ``label`` on ``seed`` (None: its first completed seed) and that seed."""
        g = groups.get(label)
        for s, run in g.by_seed() if g else []:
            if seed is None or s == seed:
                return run.path, s
        return None, -1 if seed is None else seed

    def section(self, claim: Claim, results: list[Any], groups: dict[str, Group]) -> list[str]:
        """The figure lines under a claim's table: each ``(label, plot)`` of ``claim.figures`` on the
        first seed, and on the worst failing seed of a check that reads that label (``results``:
        the claim's judged checks, with ``check`` and ``worst_failing``)."""
        if not claim.figures:
            return []
        wanted: list[tuple[str, str, Optional[int]]] = [(label, name, None) for label, name in claim.figures]
        for r in results:
            if r.worst_failing is not None:
                wanted += [(label, name, r.worst_failing) for label, name in claim.figures
                           if label in r.check.labels()]
        shown, captions, seen = [], [], set()
        for label, name, seed in wanted:
            run_dir, s = self._run_dir(groups, label, seed)
            if (label, name, s) in seen:
                continue
            seen.add((label, name, s))
            copied = copy_figure(run_dir, label, name, s, self.dest_dir)
            if copied:
                (out, width), alt = copied, f"{label} {name} seed {s}"
                shown.append(f'<img src="{self.rel}/{out}" width="{width * 3 // 4}" alt="{alt}" title="{alt}">')
                captions.append(f"({len(shown)}) `{label}`, {name.replace('_', ' ')}, seed {s}"
                                + (" (worst failing seed)" if seed is not None else ""))
            else:
                captions.append(f"`{label}` {name.replace('_', ' ')}, seed {s}: no figure (run not done or no plot)")
        return ["", "<p>" + "\n".join(shown) + "</p>" if shown else "", "", "Figures: " + "; ".join(captions) + "."]
