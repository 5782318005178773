"""nodex's Hydra launchers, where Hydra looks for plugins (it instantiates launchers from ``hydra_plugins.*`` only).

The code lives in :mod:`nodex.launchers`; these names are what ``configs/hydra/launcher/*.yaml`` select.
"""

from nodex import launchers as _impl


class BasicLauncher(_impl.BasicLauncher):
    """:class:`nodex.launchers.BasicLauncher` (``hydra/launcher=basic``, the default)."""


class JoblibLauncher(_impl.JoblibLauncher):
    """:class:`nodex.launchers.JoblibLauncher` (``hydra/launcher=joblib``)."""


class SlurmLauncher(_impl.SlurmLauncher):
    """:class:`nodex.launchers.SlurmLauncher` (``hydra/launcher=slurm``)."""
