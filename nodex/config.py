"""Where the configs live and how to compose them outside the CLI.

``compose(["model=galnode", "data=rings"])`` returns the same ``DictConfig`` that
``nodex train model=galnode data=rings`` runs (without Hydra's ``hydra`` node).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).parent / "configs"


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``config_name`` (``train`` or ``eval``) with Hydra ``overrides`` applied.

    Raises:
        hydra.errors.HydraException, omegaconf.errors.OmegaConfBaseException: an unknown
            option, key or a value of the wrong type.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name=config_name):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
