"""``nodex`` console script: ``nodex train|eval [HYDRA OVERRIDES]``.

A thin dispatcher pops the sub-command and hands the rest of ``argv`` to one
``@hydra.main`` function per command. Overrides are checked up front so that a typo in a
group option or a key gives one line that says what to change (exit 2), instead of Hydra's
multi-line report. torch is imported lazily: ``--help``/``--cfg`` stay fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nodex.config import CONFIG_DIR
from nodex.sweeps import quiet_schema_warning, take_outcome

USAGE = """usage: nodex COMMAND [HYDRA OVERRIDES...]

commands:
  train   train a model:  nodex train model=galnode data=rings seed=0
          sweep:          nodex train --multirun model=vanilla,depthcat seed=0,1
  eval    evaluate a run: nodex eval ckpt=outputs/train/DATE/TIME [data.n_test=5000]
  list    the named experiments with their one-line descriptions
  report  results table:  nodex report outputs/train/multirun/DATE/TIME [--by model,data] [--format csv]
  reproduce  run the paper's experiments and write REPRODUCTION.md: nodex reproduce --budget smoke

`nodex train --help` lists the config groups and their options;
`nodex train --cfg job` prints the composed config."""

log = logging.getLogger("nodex")
quiet_schema_warning()  # at import: launcher workers unpickle this module before composing their job


class UsageError(Exception):
    """A command-line mistake caught before Hydra runs."""


def _report(message: str) -> None:
    print(f"nodex: error: {message}", file=sys.stderr)


def _progress(cfg: DictConfig) -> bool:
    setting = cfg.trainer.get("progress", "auto")
    if setting == "auto":
        return HydraConfig.get().mode != RunMode.MULTIRUN and sys.stderr.isatty()
    return bool(setting)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def train(cfg: DictConfig) -> float | None:
    from nodex.errors import NodexError
    from nodex.train.run import run_train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        result = run_train(cfg, run_dir, progress=_progress(cfg))
    except NodexError as exc:
        log.error("%s", exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # the sweep goes on; result.json says why
        raise SystemExit(_exit_with(str(exc)))
    except KeyboardInterrupt:
        _report(f"interrupted; last checkpoint saved in {run_dir}/checkpoints/last.pt")
        raise SystemExit(130)
    monitor = cfg.get("monitor")
    return float(result["metrics"][monitor]) if monitor and monitor in result["metrics"] else None


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    from nodex.errors import NodexError
    from nodex.train.run import run_eval

    hc = HydraConfig.get()
    overrides = _value_overrides(list(hc.overrides.task), cfg, skip={"ckpt", "split", "which", "device"})
    try:
        payload = run_eval(cfg, overrides, hc.runtime.output_dir)
    except NodexError as exc:
        raise SystemExit(_exit_with(str(exc)))
    for key, value in payload["metrics"].items():
        print(f"{key}: {value:.6g}")


def _exit_with(message: str) -> int:
    _report(message)
    return 1


def _value_overrides(lines: list[str], cfg: DictConfig, skip: set[str]) -> dict:
    """The ``key=value`` overrides given on the command line, with values as Hydra composed them."""
    from omegaconf import OmegaConf

    out = {}
    for line in lines:
        key = line.split("=", 1)[0].lstrip("+~")
        if key in skip or "." not in key or key.startswith("hydra."):
            continue
        out[key] = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
    return out


COMMANDS = {"train": (train, "train"), "eval": (evaluate, "eval")}
# Non-Hydra commands: "module:function" taking argv and returning the exit code (argparse inside).
PLAIN_COMMANDS = {"list": "nodex.paper.experiments:list_main", "report": "nodex.paper.report:report_main", "reproduce": "nodex.paper.reproduce:reproduce_main"}
_HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose the config once with the given overrides (sweeps: their first value) and turn
    a failure into one :class:`UsageError` line naming the valid choices."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    lines, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _HYDRA_FLAGS_WITH_VALUE and "=" not in arg
            if arg in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn"):
                return  # a user overlay changes the search path: let Hydra report
            continue
        lines.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as exc:
        raise UsageError(f"cannot parse overrides ({str(exc).splitlines()[0]}); write them as key=value") from None
    from nodex.sweeps import missing_plugin

    missing = missing_plugin([(o.key_or_group, str(o.value())) for o in parsed if not o.is_sweep_override() and "/" in o.key_or_group or o.key_or_group == "hparams_search"])
    if missing:
        raise UsageError(missing)
    probe = []
    for o in parsed:
        hydra_group = o.key_or_group.lstrip("/") in ("hydra/launcher", "hydra/sweeper")  # checked: a typo gets the option list
        if (o.key_or_group.startswith("hydra") or (o.package or "").startswith("hydra")) and not hydra_group:
            continue
        if o.is_sweep_override():
            if not (o.is_discrete_sweep() or o.is_range_sweep()):
                continue  # interval()/tag sweeps are for sweepers
            first = next(iter(o.sweep_string_iterator()), None)
            if first is None:
                continue
            probe.append(f"{o.get_key_element()}={first}")
        else:
            probe.append(o.input_line)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name=config_name):
            compose(config_name=config_name, overrides=probe)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UsageError(_one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def _one_line(exc: Exception) -> str:
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Could not find" in text and "Available options" in text:
        # "In 'train': Could not find 'model/foo'" + option list
        missing = text.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, name = missing.rpartition("/")
        after = text.split("Available options", 1)[1].split("\n", 1)[1]
        options = [ln.strip() for ln in after.split("Config search path", 1)[0].splitlines() if ln.strip()]
        return f"unknown {group} {name!r}; choose one of: {', '.join(options)}"
    if "Could not override" in text or "Key '" in text and "not in struct" in text:
        key = text.split("'", 2)[1] if "'" in text else "?"
        return f"unknown config key {key!r}; check the spelling (`nodex train --cfg job` lists the keys) or add it with +{key}=..."
    return lines[0] if lines else type(exc).__name__


def _completion(argv: list[str]) -> int:
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) <= 2:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return 0
    cmd = words[1]
    if cmd not in COMMANDS:
        return 0
    os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    sys.argv = [sys.argv[0], *argv]
    COMMANDS[cmd][0]()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nodex`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-sc"], ["--shell-completion"]) and any(a.startswith("query=") for a in argv):
        return _completion(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in PLAIN_COMMANDS:
        import importlib

        module, function = PLAIN_COMMANDS[cmd].split(":")
        return getattr(importlib.import_module(module), function)(rest)
    if cmd not in COMMANDS:
        _report(f"unknown command {cmd!r}; choose one of: {', '.join([*COMMANDS, *PLAIN_COMMANDS])}")
        return 2
    task, config_name = COMMANDS[cmd]
    quiet_schema_warning()  # again: warning filters may have been reset since import (pytest does)
    informational = any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "-sc", "--shell-completion") or a.startswith("--info") for a in rest)
    if not informational:
        try:
            check_overrides(config_name, rest)
        except UsageError as exc:
            _report(str(exc))
            return 2
    take_outcome()  # drop a stale one (an earlier in-process call)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "nodex", *rest]
    try:
        task()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code
    finally:
        sys.argv = saved
    outcome = take_outcome()
    if outcome is not None and outcome.failed:
        _report(f"{len(outcome.failed)} job(s) failed; see result.json in: " + "; ".join(str(d) for d, _ in outcome.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
