"""trainer.num_threads=auto picks one thread for small fields and torch's default for big ones."""

from __future__ import annotations

import pytest
import torch

from nodex.errors import ConfigError
from nodex.train.setup import Pipeline
from nodex.train.threads import choose_threads, flops_per_evaluation


def _pipe(compose_cfg, *overrides):
    return Pipeline(compose_cfg(["data.n_val=8", "data.n_test=8", *overrides]))


def test_flop_count_of_the_default_field(compose_cfg):
    pipe = _pipe(compose_cfg, "data.n_train=1024")
    # 2-32-32-2 MLP: (2·32 + 32·32 + 32·2) multiply-adds = 1152 MACs ≈ 2304 FLOP per sample
    flops = flops_per_evaluation(pipe.model, pipe.data.train[0], 1024)
    assert flops == pytest.approx(2304 * 1024, rel=0.05)


def test_auto_threads(compose_cfg):
    torch.set_num_threads(2)
    small = _pipe(compose_cfg, "data.n_train=256")
    assert choose_threads("auto", small.model, small.data.train[0], 1024) == 1
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    wide = _pipe(compose_cfg, "data.n_train=256", "model.field.hidden=[256,256]")
    assert choose_threads("auto", wide.model, wide.data.train[0], 1024) == 2  # 136 MFLOP per evaluation
    batch = _pipe(compose_cfg, "data.n_train=256")
    assert choose_threads("auto", batch.model, batch.data.train[0], 4096) == 2  # 9.4 MFLOP
    assert choose_threads(None, wide.model, wide.data.train[0], 1024) == 2


@pytest.mark.parametrize("bad", [0, -2, "many"])
def test_bad_thread_counts(compose_cfg, bad):
    pipe = _pipe(compose_cfg, "data.n_train=16")
    with pytest.raises(ConfigError, match="trainer.num_threads"):
        choose_threads(bad, pipe.model, pipe.data.train[0], 16)
