"""nodex: the experiments of "Dissecting Neural ODEs" (Massaroli et al., NeurIPS 2020) from configs."""

__version__ = "0.1.0"
