"""The CLI's words for a command-line mistake: checks made before Hydra runs, and a composition failure as one line
that says what to change (exit 2)."""

from __future__ import annotations

from typing import Sequence

from nodex.config import check_moved_overrides
from nodex.errors import ConfigError
from nodex.sweeps import missing_plugin


def report_error(message: str) -> None:
    """``nodex: error: MESSAGE`` on stderr: how every failure reaches the console."""
    import sys

    print(f"nodex: error: {message}", file=sys.stderr)


class UsageError(Exception):
    """A command-line mistake caught before the job runs (exit 2)."""


_TYPE_WORDS = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


def config_error_line(exc: BaseException) -> str | None:
    """A value of the wrong type (OmegaConf's ``ValidationError``, possibly wrapped by Hydra) as one line naming the
    key, the value and the expected type; ``None`` for other errors."""
    from omegaconf.errors import ValidationError

    error = exc if isinstance(exc, ValidationError) else exc.__cause__
    if not isinstance(error, ValidationError) or not getattr(error, "full_key", None):
        return None
    msg = str(error.msg)
    wanted = next((words for name, words in _TYPE_WORDS.items() if f"converted to {name}" in msg), None)
    wanted = "true or false" if "is not a valid bool" in msg else wanted
    wanted = "a list" if "is not a ListConfig, list or tuple" in msg else wanted
    if wanted is None:
        return f"{error.full_key}={error.value!r}: {str(error.msg).splitlines()[0]}"
    return f"{error.full_key}={error.value!r} is not {wanted}: give {error.full_key} {wanted}"


def user_options(options: Sequence[str]) -> list[str]:
    """A config group's options without the ConfigStore's internal ``schema*`` entries (nodex/config.py)."""
    return [o for o in options if not o.startswith("schema")]


def _check_no_schema(parsed: Sequence) -> None:
    """``model=schema`` (any group's ``schema*``, an internal ConfigStore entry) is refused like an unknown option."""
    from nodex.config import CONFIG_DIR

    for override in parsed:
        group = override.key_or_group
        if not (CONFIG_DIR / group).is_dir() or override.is_delete():
            continue
        value = override.value()
        values = getattr(value, "list", None) or [value]
        chosen = next((str(v) for v in values if str(v).startswith("schema")), None)
        if chosen is not None:
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            raise UsageError(f"unknown {group} {chosen!r}; choose one of: {', '.join(options)}")


def one_line(exc: BaseException) -> str:
    """A composition failure as one line that says what to change (no Hydra text scraping)."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        return f"unknown {group} {name!r}; choose one of: {', '.join(user_options(exc.options or []))}"
    typed = config_error_line(exc)
    if typed is not None:
        return typed
    cause = exc.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        key = cause.full_key
        return (f"unknown config key {key!r}; check the spelling (`nodex train --cfg job` lists the keys) "
                f"or add it with +{key}=...")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def command_line_overrides(args: Sequence[str]) -> list[str]:
    """The Hydra overrides among a sub-command's arguments: ``key=value``, ``+key=value``, ``~key`` (a flag's value,
    ``--cfg job`` or ``-p hydra.launcher``, has no ``=``)."""
    return [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def check_overrides(args: Sequence[str]) -> None:
    """What Hydra would report as a traceback or not at all, checked before it runs: an unparsable override, an
    override of a moved key (``solver.S``), a launcher/sweeper whose plugin is not installed, a ``--config-dir``
    that is not a directory. Unknown options and keys are Hydra's to find (:func:`one_line` words them).

    Raises:
        UsageError: one line saying what to change.
    """
    import os

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = command_line_overrides(args)
    try:
        check_moved_overrides(overrides)
        parsed = OverridesParser.create().parse_overrides(overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except HydraException as exc:
        unicode = next((o for o in overrides if not o.isascii() and "'" not in o and '"' not in o), None)
        if unicode is not None:  # Hydra's grammar takes non-ASCII characters in quotes only
            key, _, value = unicode.partition("=")
            raise UsageError(f"cannot parse {unicode}: quote a value with non-ASCII characters, "
                             f"{key}='{value}' (in the shell: \"{key}='{value}'\")") from None
        raise UsageError(f"cannot parse overrides ({str(exc).splitlines()[0]}); write them as key=value, and quote a "
                         "value that holds '=' or ',' (a sweep job's dir): ckpt=\"'outputs/.../0-seed=0'\"") from None
    _check_no_schema(parsed)
    groups = [o for o in parsed if "/" in o.key_or_group or o.key_or_group == "hparams_search"]
    missing = missing_plugin([(o.key_or_group, str(o.value())) for o in groups if not o.is_sweep_override()])
    if missing:
        raise UsageError(missing)
    for flag, value in zip(args, args[1:]):
        if flag in ("--config-dir", "-cd") and not os.path.isdir(value):
            raise UsageError(f"--config-dir {value} is not a directory")
