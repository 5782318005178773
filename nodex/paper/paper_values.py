"""The paper's numbers, read from ``paper_values.yaml`` (the one place they are written): :data:`PAPER_VALUES`
is ``{experiment: {metric: PaperValue}}``; the 5k-MNIST stand-ins reuse the MNIST rows (parameter counts
compare exactly; accuracy and NFE are the full-MNIST numbers, for reference)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

VALUES_FILE = Path(__file__).with_name("paper_values.yaml")


@dataclass(frozen=True)
class PaperValue:
    """One number from the paper: ``value`` in nodex's units, ``shown`` as the paper prints it
    (e.g. ``73.4%``, ``36.1K``), ``source`` where it comes from."""

    value: float
    source: str
    shown: str = ""

    def text(self) -> str:
        return self.shown or f"{self.value:g}"


def load_values(path: Path = VALUES_FILE) -> dict[str, dict[str, PaperValue]]:
    """``{experiment: {metric: PaperValue}}`` from ``path``, with the ``mnist5k_*`` rows added."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    sources = data["sources"]
    out = {name: {metric: PaperValue(float(v["value"]), sources[v["source"]], str(v.get("shown", "")))
                  for metric, v in metrics.items()}
           for name, metrics in data["values"].items()}
    for name in [n for n in out if n.startswith("table1_mnist_")]:
        row = out[name]
        out["mnist5k_" + name.removeprefix("table1_mnist_")] = {
            "params": row["params"],
            **{m: PaperValue(row[m].value, row[m].source + ", full MNIST", row[m].text() + " (full MNIST)")
               for m in ("test/accuracy", "nfe_forward")},
        }
    return out


PAPER_VALUES: dict[str, dict[str, PaperValue]] = load_values()
ARITHMETIC = PAPER_VALUES["table1_mnist_anode"]["params"].source  # a count from the table's layout


def paper_value(experiment: Optional[str], metric: str) -> Optional[PaperValue]:
    """The paper's value of ``metric`` for ``experiment``, or ``None``."""
    if not experiment:
        return None
    return PAPER_VALUES.get(experiment, {}).get(metric)
