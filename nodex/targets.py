"""A user's own classes and functions named in a config by Hydra's ``_target_`` convention.

``{_target_: mypkg.MyField, width: 64}`` names an importable callable; it is called with the node's other keys
(``name`` excepted: nodex's own label) plus the extra arguments nodex supplies (``dim=``, ``seed=``, ...) that its
signature takes. A function that is itself the thing (a field ``f(s, z)``), not a builder of it, is returned as it
is: with ``_partial_: true`` (Hydra's convention: bound to the node's keys, not called), or when it takes none of the
keys nodex would pass it and the node gives none. Modules are imported as Python imports them; when that fails, the current directory is tried as
well (a project folder with ``mypkg/`` beside the command, as ``python -m`` would see it).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from nodex.errors import ConfigError

RESERVED = ("_target_", "name", "_partial_")  # keys nodex reads itself; never passed to the target
_SEARCH_DIRS: list[str] = []  # folders tried after sys.path and the current directory (a restored run's own)


def add_search_dir(folder: str | os.PathLike) -> None:
    """Also look for ``_target_`` modules in ``folder`` (the folder a restored run was started from)."""
    if str(folder) not in _SEARCH_DIRS:
        _SEARCH_DIRS.append(str(folder))


def has_target(node: Any) -> bool:
    """Whether a config node names a user callable (``_target_``)."""
    return isinstance(node, (DictConfig, dict)) and node.get("_target_") is not None


def locate(path: str, key: str) -> Callable[..., Any]:
    """The callable ``path`` (``pkg.module.Name``), importing its module.

    Raises:
        ConfigError: not a dotted path, a module that cannot be imported, or no such attribute (names ``key``).
    """
    module_name, _, attr = str(path).rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{key}={path!r} must be a dotted import path such as mypkg.fields.MyField")
    module = _import(module_name, path, key)
    target = getattr(module, attr, None)
    if target is None or not callable(target):
        raise ConfigError(f"{key}={path!r}: module {module_name!r} has no callable {attr!r}; check the spelling")
    return target


def _import(module_name: str, path: str, key: str) -> Any:
    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != top:
            raise ConfigError(_not_importable(key, path, exc)) from None  # the module imports something missing
        for folder in (os.getcwd(), *_SEARCH_DIRS):  # the project folder, as `python -m` would see it
            if folder not in sys.path and ((Path(folder) / top).is_dir() or (Path(folder) / f"{top}.py").is_file()):
                sys.path.append(folder)
                return _import(module_name, path, key)
        raise ConfigError(_not_importable(key, path, exc)) from None
    except Exception as exc:  # the user's module itself fails on import
        raise ConfigError(f"{key}={path!r}: importing {module_name!r} failed ({type(exc).__name__}: {exc})") from None


def _not_importable(key: str, path: str, exc: ModuleNotFoundError) -> str:
    return (f"{key}={path!r}: no module named {exc.name!r}; run nodex from the folder that holds it, "
            "or add that folder to PYTHONPATH (or pip install your package)")


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` (a class: its ``__init__``) takes the keyword ``name`` (or ``**kwargs``). A class without an
    ``__init__`` of its own (``nn.Module``'s ``*args, **kwargs``) takes none."""
    if inspect.isclass(fn) and _default_init(fn):
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _default_init(cls: type) -> bool:
    import torch

    return cls.__init__ in (object.__init__, torch.nn.Module.__init__)


def _is_the_function(target: Callable[..., Any], kwargs: dict[str, Any], supplied: dict[str, Any]) -> bool:
    """``target`` is a plain function that is the thing itself: the node gives no keys and its required parameters
    are none of those nodex supplies (``def f(s, z)`` as a field, not ``def make_field(dim)``)."""
    if not inspect.isfunction(target) or kwargs:
        return False
    required = [p.name for p in inspect.signature(target).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return bool(required) and not set(required) & set(supplied)


def call_target(node: DictConfig, key: str, supplied: dict[str, Any]) -> Any:
    """Call ``node._target_`` with the node's keys plus those of ``supplied`` its signature takes.

    Args:
        node: the config node (``{_target_: ..., **kwargs}``).
        key: its dotted path, for messages (``model.field``).
        supplied: what nodex knows (``{"dim": 2}``); a key the YAML also sets keeps the YAML's value.

    Raises:
        ConfigError: the target cannot be found, or its call fails on the arguments (names the key and the cause).
    """
    target = locate(node._target_, f"{key}._target_")
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in RESERVED}
    partial = node.get("_partial_", False)
    if not isinstance(partial, bool):
        raise ConfigError(f"{key}._partial_={partial!r} must be true or false")
    if partial:
        return functools.partial(target, **kwargs)
    if _is_the_function(target, kwargs, supplied):
        return target
    kwargs.update({k: v for k, v in supplied.items() if k not in kwargs and accepts(target, k)})
    call, fits = f"{node._target_}({', '.join(f'{k}=...' for k in kwargs)})", _binds(target, kwargs)
    try:
        return target(**kwargs)
    except Exception as exc:
        if isinstance(exc, TypeError) and not fits:  # the arguments do not fit its signature
            raise ConfigError(f"{key}: {call} failed ({exc}); set the keys it takes in the {key} YAML") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{key}: {call} raised {type(exc).__name__}" + (f": {reason}" if reason else "") +
                          "; the arguments fit its signature, so the error is inside it") from None


def _binds(target: Callable[..., Any], kwargs: dict[str, Any]) -> bool:
    """Whether ``kwargs`` fit ``target``'s signature (a class: its ``__init__``); ``False`` when it cannot be read or
    they do not fit (the call then reports the mismatch)."""
    try:
        inspect.signature(target).bind(**kwargs)
    except (TypeError, ValueError):
        return False
    return True


def target_label(node: Any) -> str | None:
    """A short label for a ``_target_`` node: its ``name`` key, else the callable's own name."""
    if not has_target(node):
        return None
    return str(node.get("name") or str(node["_target_"]).rpartition(".")[2])
