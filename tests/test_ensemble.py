"""Seed ensembles (``trainer.ensemble=K``): K members in one batched solve reproduce K separate
runs (fixed-step solvers here; nodex's adaptive pairs in tests/test_member_steps.py), write one standard run
directory each, and evaluate unchanged."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, read_scalars
from nodex.errors import ConfigError
from nodex.models.ensemble import EnsembleNeuralODE, member_output
from nodex.train.checkpoint import load_checkpoint
from nodex.train.members import clip_members, ensemble_size, member_optimizer_state
from nodex.train.run import run_train
from nodex.train.setup import Pipeline

K = 3
RK4 = ["solver=rk4", "trainer.device=cpu"]


def _separate(compose_cfg, tmp_path, seed: int, overrides: list[str]):
    cfg = compose_cfg([*FAST, *RK4, *overrides, f"seed={seed}"])
    run_dir = tmp_path / f"sep-{seed}"
    result = run_train(cfg, run_dir)
    return run_dir, result


def _jsonl(path) -> list[dict]:
    """metrics.jsonl without the wall-clock entries."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.slow
def test_ensemble_reproduces_separate_runs_and_writes_member_run_dirs(train_run, compose_cfg, tmp_path, cli):
    run_dir, _, code, err = train_run(*RK4, f"trainer.ensemble={K}", name="ens")
    assert code == 0, err
    summary = json.loads((run_dir / "ensemble.json").read_text())
    assert summary["status"] == "completed" and summary["size"] == K and summary["seeds"] == [0, 1, 2]
    assert summary["members"] == [f"member-{k}" for k in range(K)] and summary["shared_step_sizes"] is False
    assert not (run_dir / "result.json").exists()  # a report must not count the ensemble twice
    accs = []
    for k in range(K):
        sep_dir, sep = _separate(compose_cfg, tmp_path, k, [])
        mdir = run_dir / f"member-{k}"
        member = json.loads((mdir / "result.json").read_text())
        # Same result.json schema (plus where it came from), seed and config of the separate run.
        assert set(sep) <= set(member) and set(member) - set(sep) == {"ensemble_member"}
        assert member["ensemble_member"] == {"index": k, "size": K, "parent": str(run_dir)}
        assert member["status"] == "completed" and member["seed"] == k and member["steps"] == 20
        assert member["config"] == {**sep["config"], "trainer": {**sep["config"]["trainer"], "ensemble": 1}}
        assert member["params"] == sep["params"] == 1224 and member["nfe_forward"] == sep["nfe_forward"] == 40
        for key, value in sep["metrics"].items():
            assert member["metrics"][key] == pytest.approx(value, abs=1e-5), key
        accs.append(member["metrics"]["test/accuracy"])
        # Final parameters, Adam state and best checkpoint as the separate run's (atol 1e-5;
        # measured: identical to the last bit on CPU).
        a, b = load_checkpoint(sep_dir / "checkpoints" / "last.pt"), load_checkpoint(mdir / "checkpoints" / "last.pt")
        assert a["model"].keys() == b["model"].keys()
        for name in a["model"]:
            assert torch.allclose(a["model"][name], b["model"][name], atol=1e-5, rtol=0), name
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for i, entries in a["optimizer"]["state"].items():
            for key, value in entries.items():
                assert torch.allclose(value, b["optimizer"]["state"][i][key], atol=1e-5, rtol=0), (i, key)
        assert b["step"] == a["step"] == 20 and b["best"] == pytest.approx(a["best"], abs=1e-6)
        best_a = load_checkpoint(sep_dir / "checkpoints" / "best.pt")
        best_b = load_checkpoint(mdir / "checkpoints" / "best.pt")
        assert best_b["step"] == best_a["step"]
        # The same train/val/test log lines and TensorBoard tags.
        rows_a, rows_b = _jsonl(sep_dir / "metrics.jsonl"), _jsonl(mdir / "metrics.jsonl")
        assert [r.keys() for r in rows_a] == [r.keys() for r in rows_b]
        for ra, rb in zip(rows_a, rows_b):
            assert ra == pytest.approx(rb, abs=1e-5)
        assert read_scalars(mdir).keys() == read_scalars(sep_dir).keys()
        assert OmegaConf.load(mdir / ".hydra" / "config.yaml").seed == k and (mdir / ".hydra" / "hydra.yaml").is_file()
        overrides = list(OmegaConf.load(mdir / ".hydra" / "overrides.yaml"))
        assert overrides[-1] == f"seed={k}"
        assert not any(o.startswith(("trainer.ensemble", "seed=0")) for o in overrides[:-1])
    assert summary["metrics"]["test/accuracy"] == pytest.approx(sum(accs) / K)
    # `nodex eval` on a member directory works unchanged and reproduces its test metrics.
    code, out, err = cli(["eval", f"ckpt={run_dir / 'member-1'}", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluated["metrics"]["test/accuracy"] == pytest.approx(accs[1], abs=1e-6)


@pytest.mark.slow
def test_ensemble_under_adjoint_matches_separate_runs(compose_cfg, tmp_path):
    """The stacked parameters are the adjoint's parameters: gradients, hence the trained
    weights, equal the separate runs' (rk4, 2 members, a few steps)."""
    overrides = ["solver.sensitivity=adjoint", "trainer.max_steps=4", "trainer.log_every=2", "trainer.val_every=4",
                 "trainer.checkpoint_every=4", "logger.tensorboard=false"]
    cfg = compose_cfg([*FAST, *RK4, *overrides, "trainer.ensemble=2"])
    summary = run_train(cfg, tmp_path / "ens")
    assert summary["status"] == "completed" and summary["nfe_backward"] == 40  # rk4 x 10 steps back
    for k in range(2):
        sep_dir, sep = _separate(compose_cfg, tmp_path, k, overrides)
        a = load_checkpoint(sep_dir / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "ens" / f"member-{k}" / "checkpoints" / "last.pt")["model"]
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
        member = json.loads((tmp_path / "ens" / f"member-{k}" / "result.json").read_text())
        assert member["nfe_backward"] == sep["nfe_backward"]


@pytest.mark.slow
def test_torchdiffeqs_adaptive_solver_members_share_steps(compose_cfg, tmp_path):
    """On torchdiffeq's engine an adaptive solve takes one step sequence for all members: every member reports the
    batched solve's NFE (nodex's dopri5/tsit5 give each member its own: tests/test_member_steps.py)."""
    cfg = compose_cfg([*FAST, "solver=dopri5", "solver.engine=torchdiffeq", "trainer.max_steps=3",
                       "trainer.log_every=3", "trainer.checkpoint_every=3", "trainer.device=cpu", "logger.tensorboard=false",
                       "trainer.ensemble=2"])
    summary = run_train(cfg, tmp_path / "ens")
    assert summary["status"] == "completed" and summary["shared_step_sizes"] is True
    results = [json.loads((tmp_path / "ens" / f"member-{k}" / "result.json").read_text()) for k in range(2)]
    assert results[0]["nfe_forward"] == results[1]["nfe_forward"] == summary["nfe_forward"] > 0
    assert all(r["status"] == "completed" and r["seed"] == k for k, r in enumerate(results))


# Slot variants: the stacked members equal the plain models, output and gradient, on both
# paths: every slot under vmap, and the batched-matmul fast path for the toy MLP fields.
VARIANTS = [
    (["model=vanilla"], True),
    (["model=depthcat"], True),
    (["model=galnode"], True),
    (["experiment=spheres_augmentation_anode"], True),
    (["experiment=spheres_augmentation_ilnode"], True),
    (["experiment=spheres_augmentation_second_order"], True),  # higher-order wrapper
    (["model=data_control"], True),
    (["model=stacked"], True),
    (["model=adaptive_depth"], True),  # per-sample depths: the fast path steps aside at run time
    (["experiment=galerkin_tracking", "data.n_train=64"], False),  # integral loss (tuple state), adjoint
    (["model=node_conv", "data=digits"], False),  # conv field with GroupNorm, image input
]


# both paths where there is a fast path; vmap alone where there is none (use_batched_field=True would run the same
# vmap code again)
PATHS = [pytest.param(overrides, fast, batched, id=f"{overrides[0].split('=')[1]}-{fast}-{name}")
         for overrides, fast in VARIANTS for batched, name in ((True, "batched"), (False, "vmap")) if fast or not batched]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,has_fast_path,batched", PATHS)
def test_stacked_members_equal_plain_models(compose_cfg, overrides, has_fast_path, batched):
    cfg = compose_cfg([*overrides, "solver=rk4", "solver.step_size=0.25", "trainer.device=cpu", "data.n_val=16",
                       "data.n_test=16"])
    pipes = []
    for k in range(2):
        c = cfg.copy()
        c.seed = k
        pipes.append(Pipeline(c))
        with torch.no_grad():  # leave the identity flow of zero-init last layers
            for p in pipes[-1].model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    ens = EnsembleNeuralODE([p.model for p in pipes])
    assert (ens._batched_field is not None) == has_fast_path
    ens.use_batched_field = batched
    assert [p.shape for p in ens.parameters()] == [(2, *p.shape) for p in pipes[0].model.parameters()]
    X = torch.stack([p.data.train[0][:8] for p in pipes])
    Y = torch.stack([p.data.train[1][:8] for p in pipes])
    out = ens(X)
    sum(p.task.loss(member_output(out, k), Y[k])[0] for k, p in enumerate(pipes)).backward()
    for k, p in enumerate(pipes):
        p.model.nfe.reset()
        own = p.model(X[k])
        p.task.loss(own, Y[k])[0].backward()
        assert torch.allclose(own.y_hat, out.y_hat[k], atol=1e-5, rtol=0)
        for name, stacked in zip(ens.param_names, ens.parameters()):
            grad = p.model.get_parameter(name).grad
            grad = grad if grad is not None else torch.zeros_like(stacked[k])
            assert torch.allclose(grad, stacked.grad[k], atol=1e-5, rtol=1e-4), name
    assert ens.nfe.count == p.model.nfe.count  # one batched solve: a member's NFE
    fresh = Pipeline(cfg).model
    ens.load_member(1, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), pipes[1].model.parameters()))


@pytest.mark.slow
def test_template_follows_the_ensemble_to_another_dtype_and_device(compose_cfg):
    """The batched fields read the Galërkin basis and stacked breakpoints from the template,
    so ``.double()`` / ``.to(device)`` must move it with the stacked tensors."""
    for model in ("model=galnode", "model=stacked"):
        cfg = compose_cfg([model, "solver=rk4", "solver.step_size=0.25", "trainer.device=cpu"])
        pipes = [Pipeline(cfg) for _ in range(2)]
        ens = EnsembleNeuralODE([p.model for p in pipes]).double()
        tensors = [*ens.template.parameters(), *ens.template.buffers()]
        assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
        X = torch.stack([p.data.train[0][:8] for p in pipes]).double()
        assert ens(X).y_hat.dtype == torch.float64
        ens.to("meta")
        assert all(t.device.type == "meta" for t in [*ens.template.parameters(), *ens.template.buffers()])


def test_clip_members_clips_each_member_by_its_own_norm():
    torch.manual_seed(0)
    plain = [[torch.randn(3, 2) * (k + 1), torch.randn(2) * (k + 1)] for k in range(3)]
    stacked = [torch.nn.Parameter(torch.zeros(3, 3, 2)), torch.nn.Parameter(torch.zeros(3, 2))]
    stacked[0].grad = torch.stack([g[0] for g in plain])
    stacked[1].grad = torch.stack([g[1] for g in plain])
    clip_members(stacked, 2.5)
    for k, grads in enumerate(plain):
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, 2.5)
        assert torch.allclose(stacked[0].grad[k], params[0].grad) and torch.allclose(stacked[1].grad[k], params[1].grad)


def test_member_optimizer_state_is_a_plain_optimizer_state():
    stacked = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([stacked], lr=0.1)
    stacked.grad = torch.randn(3, 4)
    opt.step()
    state = member_optimizer_state(opt, 2)
    assert state["state"][0]["exp_avg"].shape == (4,)
    assert torch.equal(state["state"][0]["exp_avg"], opt.state[stacked]["exp_avg"][2])
    assert state["state"][0]["exp_avg"].untyped_storage().size() == 4 * 4  # a copy, not a view of all members
    assert float(state["state"][0]["step"]) == 1.0
    plain = torch.optim.Adam([torch.nn.Parameter(torch.zeros(4))], lr=0.1)
    plain.load_state_dict(state)


@pytest.mark.slow
def test_bad_ensemble_value_is_one_line_config_error(train_run):
    run_dir, result, code, err = train_run("trainer.ensemble=0", name="bad")
    assert code == 1
    line = [ln for ln in err.splitlines() if ln.startswith("nodex: error:")]
    assert len(line) == 1 and "trainer.ensemble=0 must be a positive integer" in line[0]
    assert result["status"] == "failed" and "trainer.ensemble=0" in result["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.ensemble=-2"], "trainer.ensemble=-2 must be a positive integer"),
        (["trainer.ensemble=2", "model=cnf", "data=moons_density", "task=density"],
         "trainer.ensemble=2 needs model.kind=neural_ode"),
    ],
)
def test_ensemble_config_errors(compose_cfg, overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        ensemble_size(cfg)
    assert "\n" not in str(info.value)
    assert ensemble_size(compose_cfg([])) == 1 and OmegaConf.select(compose_cfg([]), "trainer.ensemble") == 1


def test_a_non_integer_ensemble_size_fails_when_the_config_is_composed(compose_cfg):
    from nodex.cli_errors import config_error_line

    with pytest.raises(Exception) as info:
        compose_cfg(["trainer.ensemble=two"])
    assert config_error_line(info.value).startswith("trainer.ensemble='two' is not an integer")


@pytest.mark.slow
def test_member_map_equals_public_vmap(compose_cfg, monkeypatch):
    """The direct functorch entry gives what torch.func.vmap gives (its fallback), tuple
    state (integral loss) included."""
    import nodex.models.ensemble.model as ens_mod

    cfg = compose_cfg(["experiment=galerkin_tracking", "data.n_train=16", "solver=rk4", "solver.step_size=0.25",
                       "trainer.device=cpu"])
    pipes = []
    for k in range(2):
        c = cfg.copy()
        c.seed = k
        pipes.append(Pipeline(c))
    ens = EnsembleNeuralODE([p.model for p in pipes])
    X = torch.stack([p.data.train[0][:8] for p in pipes])
    fast = ens(X)
    monkeypatch.setattr(ens_mod, "_vmap_increment_nesting", None)
    public = ens(X)
    assert torch.equal(fast.y_hat, public.y_hat) and torch.equal(fast.loss_integral, public.loss_integral)
    assert fast.loss_integral.shape == (2,)


@pytest.mark.slow
def test_divergence_names_the_member_and_fails_every_member(train_run):
    run_dir, _, code, err = train_run("solver=rk4", "trainer.ensemble=2", "trainer.optim.lr=1e30", "data.n_train=64",
                                      name="div")
    assert code == 1
    line = [ln for ln in err.splitlines() if ln.startswith("nodex: error:")]
    assert len(line) == 1 and "member 0 (seed 0): train/loss" in line[0] and "became non-finite by step 5" in line[0]
    for k in range(2):
        result = json.loads((run_dir / f"member-{k}" / "result.json").read_text())
        assert result["status"] == "failed" and result["error"].startswith("member 0 (seed 0)") and result["steps"] == 5
    assert json.loads((run_dir / "ensemble.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_minibatches_schedule_and_clipping_match_separate_runs(compose_cfg, tmp_path):
    """Shuffled mini-batches (each member's own batch generator), an LR schedule and
    per-member gradient clipping: still the separate runs' weights."""
    overrides = ["data.resample=false", "trainer.batch_size=32", "trainer.scheduler.name=step",
                 "trainer.scheduler.step_size=2",
                 "trainer.grad_clip=0.05", "trainer.max_steps=6", "trainer.log_every=3", "trainer.val_every=6",
                 "trainer.checkpoint_every=6", "logger.tensorboard=false"]
    summary = run_train(compose_cfg([*FAST, *RK4, *overrides, "trainer.ensemble=2"]), tmp_path / "ens")
    assert summary["status"] == "completed"
    for k in range(2):
        sep_dir, _ = _separate(compose_cfg, tmp_path, k, overrides)
        a = load_checkpoint(sep_dir / "checkpoints" / "last.pt")
        b = load_checkpoint(tmp_path / "ens" / f"member-{k}" / "checkpoints" / "last.pt")
        for name in a["model"]:
            assert torch.allclose(a["model"][name], b["model"][name], atol=1e-5, rtol=0), name
        assert b["scheduler"] == a["scheduler"]
        assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005 * 0.9**3)
        assert torch.equal(a["rng"]["batches"], b["rng"]["batches"])


@pytest.mark.slow
def test_checkpoints_store_the_data_spec_that_rebuilds_the_model(compose_cfg, tmp_path):
    """A single run's and an ensemble member's checkpoints name the model's input shape and
    readout width: enough to rebuild the model (no dataset) and load the weights."""
    from nodex.models import DataSpec, build_model
    from nodex.train.setup import solver_settings

    overrides = [*FAST, *RK4, "trainer.max_steps=2", "trainer.log_every=2", "logger.tensorboard=false",
                 "trainer.plots=false"]
    run_train(compose_cfg(overrides), tmp_path / "one")
    run_train(compose_cfg([*overrides, "trainer.ensemble=2"]), tmp_path / "ens")
    for path in (tmp_path / "one", tmp_path / "ens" / "member-1"):
        for which in ("last", "best"):
            ckpt = load_checkpoint(path / "checkpoints" / f"{which}.pt")
            assert ckpt["data_spec"] == {"input_shape": [2], "n_outputs": 2}, (path, which)
            cfg = OmegaConf.create(ckpt["config"])
            spec = DataSpec(tuple(ckpt["data_spec"]["input_shape"]), ckpt["data_spec"]["n_outputs"])
            model = build_model(cfg.model, spec, solver_settings(cfg.solver))
            model.load_state_dict(ckpt["model"])
            assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("solver, shared", [("dopri5", False), ("bosh3", True)])
def test_the_log_says_whether_members_share_step_sizes_as_ensemble_json_does(train_run, solver, shared):
    run_dir, _, code, err = train_run("trainer.ensemble=2", f"solver={solver}", "trainer.max_steps=5")
    assert code == 0, err
    summary = json.loads((run_dir / "ensemble.json").read_text())
    assert summary["shared_step_sizes"] is shared
    assert ("(members share step sizes)" in (run_dir / "train.log").read_text()) is shared


@pytest.mark.parametrize("layer", [torch.nn.Dropout(0.1), torch.nn.BatchNorm1d(2)])
def test_a_field_with_dropout_or_batch_norm_is_refused_in_an_ensemble(layer):
    from nodex.models import GeneralNeuralODE
    from nodex.models.user import TargetField
    from nodex.ode import SolverSettings

    def member():
        field = TargetField(torch.nn.Sequential(torch.nn.Linear(2, 2), copy.deepcopy(layer)), 1)
        return GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), SolverSettings(method="rk4",
                                                                                                step_size=0.5))

    with pytest.raises(ConfigError, match=rf"under torch.func.vmap, where {type(layer).__name__} \(field.f.1\) cannot "
                                          r"train as in a separate run .*: train the seeds as a sweep"):
        EnsembleNeuralODE([member(), member()])
