"""What a training run writes when it ends: each member's ``result.json`` (and its TensorBoard
hparams), and for a seed ensemble the ``ensemble.json`` summary beside the member directories.
The ``result.json`` schema and its writer live in :mod:`nodex.runs`.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nodex.data import data_name
from nodex.runs import hydra_snapshot, override_key, write_json
from nodex.train.members import Member


def hparams(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The TensorBoard hparams of the run in ``run_dir``: its model, data and solver presets (Hydra's choices), seed
    and experiment, then every key its command line overrides (``run_dir/.hydra/overrides.yaml``: Hydra's task
    overrides, an ensemble member's own seed included) with the value the run used; ``hydra.*`` (output paths)
    left out. A config group's value is the chosen preset's name."""
    overrides, choices = hydra_snapshot(run_dir)
    out: dict[str, Any] = {"experiment": cfg.get("experiment_name")} if cfg.get("experiment_name") else {}
    out.update(model=choices.get("model") or cfg.model.name, data=choices.get("data") or data_name(cfg.data),
               solver=choices.get("solver") or cfg.solver.method, seed=int(cfg.seed))
    for key in map(override_key, overrides):
        if key.startswith("hydra.") or key == "hydra":
            continue
        if key in choices:  # a config group (model=..., experiment=...): its preset's name
            out[key] = choices[key]
            continue
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def metadata_markdown(result: dict[str, Any]) -> str:
    """The ``run/metadata`` TensorBoard text: versions, device, command, parameter count."""
    rows = [f"| {k} | {v} |" for k, v in result["versions"].items()]
    rows += [f"| device | {result['device']} |", f"| command | `{result['command']}` |",
             f"| params | {result['params']} |"]
    return "| key | value |\n|---|---|\n" + "\n".join(rows)


def finish_member(m: Member, totals: dict[str, int], wall: float) -> None:
    """Record the steps, wall time and mean NFE, write ``result.json`` into the member's run
    directory, and close its logger (with the hparams of a completed run)."""
    result = m.result
    result["steps"] = m.state.step
    result["wall_time_s"] = wall  # an ensemble's: all members were trained in it
    if totals["steps"]:
        result["nfe_forward"] = totals["nfe_forward"] / totals["steps"]
        result["nfe_backward"] = totals["nfe_backward"] / totals["steps"]
    write_json(m.run_dir / "result.json", result)
    if m.logger is not None:
        if result["status"] == "completed":
            run_values = {k: result[k] for k in ("nfe_forward", "nfe_backward", "params", "wall_time_s")}
            m.logger.hparams(hparams(m.cfg, m.run_dir), run_values, m.state.step)
        m.logger.close()


def finish_summary(summary: dict[str, Any], members: list[Member], wall: float, totals: dict[str, int]) -> None:
    """Fill ``ensemble.json``'s members' means, standard deviations and steps from their results, and its NFE
    (mean per step) from the batched solve's ``totals`` (each member's own NFE is in its ``result.json``)."""
    done = [m.result["metrics"] for m in members if m.result["status"] == "completed"]
    keys = [k for k in (done[0] if done else {}) if all(k in d for d in done)]
    summary["metrics"] = {k: statistics.fmean(d[k] for d in done) for k in keys}
    summary["metrics_std"] = {k: statistics.pstdev([d[k] for d in done]) for k in keys}
    summary["member_metrics"] = [m.result["metrics"] for m in members]
    warnings = [f"member {m.index}: {w}" for m in members for w in m.result.get("warnings", [])]
    if warnings:
        summary["warnings"] = warnings
    summary["steps"] = members[0].state.step if members else 0
    summary["wall_time_s"] = wall
    if totals["steps"]:
        summary["nfe_forward"] = totals["nfe_forward"] / totals["steps"]
        summary["nfe_backward"] = totals["nfe_backward"] / totals["steps"]
