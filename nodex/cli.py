"""``nodex`` console script: ``nodex train|eval|plot [HYDRA OVERRIDES]``, ``nodex list|report|reproduce``.

Thin by design: check what Hydra would not word well (an unparsable override, a moved key, a missing launcher
plugin), then hand the sub-command's arguments to ``hydra.main`` over nodex's configs, which composes the config
and runs (or sweeps) the job of :mod:`nodex.jobs`. Every failure is one line on stderr: exit 2 for a
command-line mistake, 1 for a failed run, 130 after Ctrl-C. torch is imported lazily: ``--help``/``--cfg`` stay
fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    print("nodex: error: interrupted while starting; nothing was run", file=sys.stderr)
    raise SystemExit(130)


if os.path.basename(sys.argv[0]) == "nodex":  # the console script: Ctrl-C while it imports is one line too
    signal.signal(signal.SIGINT, _interrupted_while_starting)

from omegaconf import DictConfig

from nodex.cli_errors import UsageError, check_overrides, one_line, report_error, user_options
from nodex.config import CONFIG_DIR
from nodex.jobs import PLOT_HELP, eval_job, plot_arguments, plot_job, train_job
from nodex.sweeps import RunRefused, abandon, quiet_schema_warning, take_outcome

USAGE = """usage: nodex COMMAND [HYDRA OVERRIDES...]

commands:
  train   train a model:  nodex train model=galnode data=rings seed=0
          sweep:          nodex train --multirun model=vanilla,depthcat seed=0,1
  eval    evaluate a run: nodex eval ckpt=outputs/train/DATE/TIME [data.n_test=5000]
  plot    redraw a run's figures: nodex plot ckpt=RUN [figures=decision_map] [format=pdf] [dpi=300]
  list    the named experiments with their one-line descriptions
  report  results table:  nodex report outputs/train/multirun/DATE/TIME [--by model,data] [--format csv]
  reproduce  run the paper's experiments and write REPRODUCTION.md: nodex reproduce --budget smoke

`nodex train --help` lists the config groups and their options;
`nodex train --cfg job` prints the composed config."""

# Config groups a user picks from, in the order `nodex train --help` shows them.
HELP_GROUPS = ("experiment", "model", "model/field", "model/input_layer", "model/readout", "data", "solver", "task",
               "trainer", "logger", "hparams_search", "hydra/launcher")

COMMANDS: dict[str, tuple[Callable[[DictConfig], Any], str]] = {
    "train": (train_job, "train"),
    "eval": (eval_job, "eval"),
    "plot": (plot_job, "plot"),
}
# Non-Hydra commands: "module:function" taking argv and returning the exit code (argparse inside).
PLAIN_COMMANDS = {
    "list": "nodex.paper.experiments:list_main",
    "report": "nodex.cli:report_command",
    "reproduce": "nodex.paper.reproduce:reproduce_main",
}


def report_command(argv: list[str]) -> int:
    """``nodex report``, with the paper's numbers beside ours (the paper tooling stays out of :mod:`nodex.report`)."""
    from nodex.paper.paper_values import paper_value
    from nodex.report import report_main

    return report_main(argv, paper=paper_value)


def train_help() -> str:
    """``nodex train --help``: what the command does, its config groups with their options, and examples."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        rows = [f"{group}: {', '.join(user_options(loader.get_group_options(group)))}" for group in HELP_GROUPS
                if group.rpartition("/")[2] in loader.list_groups(group.rpartition("/")[0])]
    return "\n".join(
        [
            "usage: nodex train [--multirun] [--cfg job|hydra|all] [KEY=VALUE ...]",
            "",
            "Train a model from the composed config; one run directory per job (result.json, metrics.jsonl,",
            "TensorBoard events, checkpoints/, plots/). Choose a config group's option with GROUP=OPTION,",
            "override any key with KEY=VALUE, sweep with --multirun and comma-separated values.",
            "",
            "== Config groups ==",
            *rows,
            "",
            "examples:",
            "  nodex train model=galnode data=rings seed=0",
            "  nodex train experiment=annuli_vanilla trainer.max_steps=500",
            "  nodex train --config-dir DIR model/field=my_field data=my_data   # your own options (README)",
            "  nodex train --multirun model=vanilla,anode,ilnode,second_order seed=0,1,2",
            "  nodex train --cfg job            # the composed config, without running",
        ]
    )


@contextmanager
def _hydra_main_as_a_call(cmd: str, args: list[str]) -> Iterator[None]:
    """What ``hydra.main`` reads from the process, set for one sub-command: ``sys.argv`` (its arguments; the job
    name, ``train``/``eval``, comes from the config), ``HYDRA_FULL_ERROR=1`` (Hydra raises
    a composition error instead of printing it and exiting 1: the CLI words it as one line, exit 2) and an
    argument parser whose mistakes raise :class:`UsageError` (``hydra.main`` has no hook for either)."""
    saved_argv, saved_env, saved_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR"), argparse.ArgumentParser.error

    def error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
        if "invalid choice" in message:  # e.g. --cfg bogus: argparse names the flag and its choices
            raise UsageError(f"{message}; see nodex {cmd} --help")
        raise UsageError("cannot parse the command line; write overrides as key=value (see nodex train --help)")

    sys.argv = [f"nodex {cmd}", *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        from hydra.core.global_hydra import GlobalHydra

        from nodex.sweep_ledger import release_sweep_locks
        from nodex.sweeps import release_run_locks

        release_run_locks()
        release_sweep_locks()  # a sweep that stopped before its end (its lock is gone with the process anyway)
        GlobalHydra.instance().clear()  # as hydra.main leaves it, whatever stopped it: the next call starts clean
        sys.argv, argparse.ArgumentParser.error = saved_argv, saved_error  # type: ignore[method-assign]
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def _run(cmd: str, args: list[str]) -> int:
    """Run one Hydra command (``hydra.main`` over nodex's configs) and return its exit code."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    task, config_name = COMMANDS[cmd]
    if "-h" in args or "--help" in args:
        print(train_help() if cmd == "train" else PLOT_HELP if cmd == "plot" else USAGE)
        return 0
    args = plot_arguments(args) if cmd == "plot" else args
    check_completion_flag(args)
    check_overrides(args)
    take_outcome()  # drop a stale one (an earlier in-process call)
    try:
        with _hydra_main_as_a_call(cmd, args):
            hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(task)()
    except (HydraException, OmegaConfBaseException) as exc:  # the config (of a sweep's first job) did not compose
        return _stopped(one_line(exc), usage=True)
    except UsageError:  # Hydra's argument parser (see _hydra_main_as_a_call)
        raise
    except RunRefused as exc:  # raised by a callback before the job runs: the run dir is in use, a refused resume
        print(f"nodex: {exc.message}" if exc.exit_code == 0 else f"nodex: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a launcher's own failure, e.g. submitit's UncompletedJobError for a killed worker
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        return _stopped(f"{type(exc).__name__}: {message}", usage=False)
    return _sweep_exit_code()


def _stopped(reason: str, usage: bool) -> int:
    """Hydra stopped with ``reason``; in a sweep, the summary of what ran is printed first. Exit 2 for a
    command-line mistake that ran nothing, else 1."""
    outcome = abandon(reason)
    if outcome is None or (usage and outcome.jobs == 0):
        report_error(reason)
        return 2 if usage else 1
    report_error(f"the sweep stopped: {reason}")
    if len(outcome.failed) > 1:
        failed = "; ".join(str(d) for d, _ in outcome.failed[:-1])
        report_error(f"{len(outcome.failed) - 1} job(s) failed; see result.json in: {failed}")
    return 1


def _sweep_exit_code() -> int:
    outcome = take_outcome()
    if outcome is not None and outcome.failed:
        report_error(outcome.error_line())
        return 1
    return 0


COMPLETION_HINT = 'add eval "$(nodex train -sc install=bash)" to ~/.bashrc (or install=zsh, install=fish)'


def check_completion_flag(args: list[str]) -> None:
    """``-sc``/``--shell-completion`` without ``install=SHELL``/``uninstall=SHELL`` after it: one line saying what
    to write (Hydra would end in a traceback)."""
    for i, arg in enumerate(args):
        if arg in ("-sc", "--shell-completion"):
            following = args[i + 1] if i + 1 < len(args) else ""
            if not following.startswith(("install=", "uninstall=", "query=")):
                raise UsageError(f"{arg} needs install=SHELL: {COMPLETION_HINT}")


def _completion(argv: list[str]) -> int:
    """Hydra's completion query (``-sc query=bash``, from the installed bash function), without the ConfigStore's
    ``schema*`` options."""
    import contextlib
    import io

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = _complete(argv)
    words = captured.getvalue().split()
    print(" ".join(w for w in words if not w.partition("=")[2].startswith("schema")))
    return code


def _complete(argv: list[str]) -> int:
    words = os.environ.get("COMP_LINE", "").split(" ")
    if len(words) <= 2:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in COMMANDS if c.startswith(prefix)))
        return 0
    cmd = words[1]
    if cmd not in COMMANDS:
        return 0
    os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    return _run(cmd, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nodex`` console script; returns the process exit code (130 after Ctrl-C)."""
    from nodex.train.preemption import StoppedWhileStarting, install_startup_handlers

    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a run handles Ctrl-C itself (saves, exits 130)
    install_startup_handlers()  # SIGTERM/SIGHUP before a run handles them: one line, not a silent death
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before a run could handle it: imports, composing the config
        report_error("interrupted before the run started; nothing to resume")
        return 130
    except StoppedWhileStarting as exc:
        report_error(f"{exc}; nothing was trained")
        return exc.exit_code


def _main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-V"]):
        from importlib.metadata import version

        print(f"nodex {version('nodex')}")
        return 0
    if argv[:1] in (["-sc"], ["--shell-completion"]) and any(a.startswith("query=") for a in argv):
        return _completion(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in PLAIN_COMMANDS:
        module, function = PLAIN_COMMANDS[cmd].split(":")
        try:
            return getattr(importlib.import_module(module), function)(rest)
        except BrokenPipeError:  # `nodex list | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if cmd not in COMMANDS:
        report_error(f"unknown command {cmd!r}; choose one of: {', '.join([*COMMANDS, *PLAIN_COMMANDS])}")
        return 2
    quiet_schema_warning()  # again: warning filters may have been reset since import (pytest does)
    try:
        return _run(cmd, rest)
    except UsageError as exc:
        report_error(str(exc))
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
