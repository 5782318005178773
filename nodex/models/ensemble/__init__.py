"""Seed ensembles: K members of one architecture evaluated as one batched model.

- :mod:`~nodex.models.ensemble.model`: :class:`EnsembleNeuralODE` (stacked member parameters, every slot
  under ``vmap`` over the member dimension) and :func:`member_output`.
- :mod:`~nodex.models.ensemble.batched`: the batched-matmul fast path of MLP fields (the layers' batched
  forms come from :mod:`nodex.models.depth`).
"""

from nodex.models.ensemble.model import EnsembleNeuralODE, member_map, member_output

__all__ = ["EnsembleNeuralODE", "member_map", "member_output"]
