"""The CLI end to end in a temp dir: run directory contract, TensorBoard, eval, multirun."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import FAST, read_scalars

from nodex.train.checkpoint import load_checkpoint

RESULT_KEYS = {"status", "error", "metrics", "nfe_forward", "nfe_backward", "params", "steps", "wall_time_s", "device", "versions", "config", "seed"}


@pytest.mark.slow
def test_train_writes_the_run_directory_contract(train_run):
    run_dir, result, code, err = train_run("trainer.plots=true")
    assert code == 0, err
    assert RESULT_KEYS <= set(result)
    assert result["status"] == "completed" and result["error"] is None
    assert result["steps"] == 20 and result["params"] == 1224  # vanilla with a 2-logit readout
    assert set(result["versions"]) == {"python", "torch", "torchdiffeq", "nodex"}
    assert result["config"]["model"]["name"] == "vanilla" and result["seed"] == 0
    assert {"test/loss", "test/accuracy", "test/nfe_forward"} <= set(result["metrics"])
    assert result["nfe_forward"] > 0 and result["nfe_backward"] == 0  # autograd: no backward solve
    for path in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "plots/decision_map.png"):
        assert (run_dir / path).exists(), path
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 5 and "train/loss" in rows[0]
    scalars = read_scalars(run_dir)
    for tag in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/nfe_forward", "train/nfe_backward", "time/step_ms", "time/samples_per_s"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["train/loss"]] == [5, 10, 15, 20]


def _hparams_tab(logdir):
    """What TensorBoard's HPARAMS tab shows for ``logdir``: ``{run: {hparam: value}}`` and the metric columns."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, metadata

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir), multiplexer=mux,
                               data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)))
    backend, ctx = backend_context.Context(tb), context.RequestContext()
    content = backend.hparams_metadata(ctx, "")
    experiment = backend.experiment_from_metadata(ctx, "", True, content, [])
    sessions = {}
    for run, tags in content.items():
        info = metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        sessions[run] = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
    columns = {h.name for h in experiment.hparam_infos}
    return sessions, columns, {m.name.tag for m in experiment.metric_infos}


@pytest.mark.slow
def test_tensorboard_hparams_carry_every_override_without_scalar_clutter(train_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, result, code, err = train_run("seed=3", "trainer.max_steps=15", "solver.rtol=1e-4", name="a")
    assert code == 0, err
    _, other, code, err = train_run("model=depthcat", name="b")
    assert code == 0, err
    sessions, columns, metric_columns = _hparams_tab(tmp_path)
    fast = {"trainer.log_every": 5, "trainer.val_every": 10, "trainer.checkpoint_every": 10, "data.n_train": 128,
            "data.n_val": 128, "data.n_test": 256, "trainer.plots": "false"}
    assert sessions["a"] == {"model": "vanilla", "data": "rings", "solver": "dopri5", "seed": 3,
                             "trainer.max_steps": 15, "solver.rtol": 1e-4, **fast}
    assert sessions["b"] == {"model": "depthcat", "data": "rings", "solver": "dopri5", "seed": 0,
                             "trainer.max_steps": 20, **fast}
    assert columns == set(sessions["a"]) | set(sessions["b"])  # the union: no run's keys hidden by another's
    assert {"test/accuracy", "test/loss", "run/params", "run/nfe_forward", "run/wall_time_s"} <= metric_columns
    assert sorted(p.parent for p in tmp_path.rglob("events.out.tfevents*")) == [run_dir, tmp_path / "b"]  # no sub-run
    scalars = read_scalars(run_dir)
    assert not [t for t in scalars if t.startswith("hparam")]
    assert scalars["run/params"] == [(15, 1224.0)] and len(scalars["test/accuracy"]) == 1
    assert scalars["test/accuracy"][0][1] == pytest.approx(result["metrics"]["test/accuracy"])
    ea = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    ea.Reload()
    text = ea.Tensors("run/metadata/text_summary")[0].tensor_proto.string_val[0].decode()
    assert result["command"].startswith("nodex train ") and "seed=3 trainer.max_steps=15 solver.rtol=1e-4" in text
    assert f"`{result['command']}`" in text


@pytest.mark.slow
def test_eval_reproduces_the_test_metric_from_the_checkpoint(trained_run, cli, tmp_path):
    run_dir, result = trained_run, json.loads((trained_run / "result.json").read_text())
    code, out, err = cli(["eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 0, err
    payload = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert payload["metrics"]["test/accuracy"] == pytest.approx(result["metrics"]["test/accuracy"], abs=1e-9)
    assert payload["metrics"]["test/loss"] == pytest.approx(result["metrics"]["test/loss"], rel=1e-6)
    assert "test/accuracy:" in out


@pytest.mark.slow
def test_eval_on_a_larger_fresh_sample(trained_run, cli, tmp_path):
    run_dir = trained_run
    code, out, err = cli(["eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "data.n_test=5000", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 0, err
    payload = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert payload["overrides"] == {"data.n_test": 5000}
    assert 0.0 <= payload["metrics"]["test/accuracy"] <= 1.0


@pytest.mark.slow
def test_same_seed_same_metrics_and_resume_continues(train_run, trained_run):
    a_dir, a = trained_run, json.loads((trained_run / "result.json").read_text())  # seed 0
    b_dir, b, *_ = train_run("seed=0", name="b")
    assert a["seed"] == b["seed"] == 0 and a["metrics"] == b["metrics"]
    c_dir, c, code, err = train_run("trainer.max_steps=30", f"trainer.resume={a_dir}", name="c")
    assert code == 0, err
    assert c["steps"] == 30
    assert load_checkpoint(c_dir / "checkpoints" / "last.pt")["step"] == 30


@pytest.mark.slow
def test_multirun_runs_one_directory_per_job(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "--multirun", *FAST, "trainer.max_steps=5", "model=vanilla,depthcat", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 2
    models = sorted(json.loads(p.read_text())["config"]["model"]["name"] for p in results)
    assert models == ["depthcat", "vanilla"]


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "--multirun", *FAST, "trainer.max_steps=5", "solver.rtol=1e-4,-1", f"hydra.sweep.dir={sweep}"])
    assert code == 1 and "1 job(s) failed" in err
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/result.json"))
    assert statuses == ["completed", "failed"]


@pytest.mark.slow
def test_cfg_job_and_help(cli):
    code, out, _ = cli(["train", "--cfg", "job"])
    assert code == 0 and "model:" in out and "solver:" in out
    code, out, _ = cli(["train", "--help"])
    head = out.split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in head.splitlines() if line.split(":")[0] in {"model", "data", "solver"})
    assert code == 0 and {"vanilla", "depthcat"} <= set(groups["model"].split(", "))
    assert {"rings", "moons", "spirals"} <= set(groups["data"].split(", ")) and "dopri5" in groups["solver"]
    code, out, _ = cli(["--help"])
    assert code == 0 and "train" in out and "eval" in out
    code, _, err = cli(["bogus"])
    assert code == 2 and "unknown command 'bogus'" in err


@pytest.mark.slow
def test_console_script_runs_as_a_subprocess(tmp_path):
    exe = [sys.executable, "-m", "nodex.cli"]
    proc = subprocess.run([*exe, "train", "model=nope"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "unknown model 'nope'; choose one of:" in proc.stderr and "vanilla" in proc.stderr


def test_checkpoint_holds_config_and_loads_weights_only(trained_run):
    run_dir = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["config"]["data"]["name"] == "rings" and ckpt["step"] == 20
    assert isinstance(ckpt["model"]["readout.weight"], torch.Tensor)


@pytest.mark.slow
def test_parameter_evolution_is_plotted_every_n_steps_and_at_the_end(train_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # 3-D rings: θ(s) and the trajectories are drawn at each plot point, not the 2-D-only decision map, state space
    # and vector field (three figures more at each point; tests/test_viz.py covers them)
    run_dir, result, code, err = train_run("model=galnode", "data.params.dim=3", "trainer.plots=true",
                                           "trainer.plot_every=10")
    assert code == 0, err
    ea = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    ea.Reload()
    assert [e.step for e in ea.Images("plots/parameters_evolution")] == [10, 20]
    assert (run_dir / "plots" / "parameters_evolution.png").exists()
    # the figure is drawn once: TensorBoard's last image has the pixels of the PNG file written at the same step
    import io

    import matplotlib.pyplot as plt

    logged = plt.imread(io.BytesIO(ea.Images("plots/parameters_evolution")[-1].encoded_image_string), format="png")
    saved = plt.imread(run_dir / "plots" / "parameters_evolution.png")
    assert logged.shape[:2] == saved.shape[:2] and abs(logged[..., :3] - saved[..., :3]).max() < 1 / 255 + 1e-6
    assert not (run_dir / "plots" / "decision_map.png").exists()


def test_train_log_has_a_progress_line_every_log_point_and_each_validation(trained_run):
    text = (trained_run / "train.log").read_text()
    import re

    steps = [int(s) for s in re.findall(r"step (\d+)/20 \| loss ", text)]
    assert steps == [5, 10, 15, 20]  # log_every=5, max_steps=20
    assert text.count("validation | loss") == 2 and "step 10 validation | loss" in text


@pytest.mark.slow
def test_runs_named_by_the_same_second_get_a_dir_each(cli, tmp_path, monkeypatch):
    """The default run dir is named by the second: a second run in that second was refused (a live run's lock, or
    the first run's finished record). It now takes DIR-1."""
    import datetime as real

    import hydra.core.utils

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 7, 9, 0, 0)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    small = [*FAST, "trainer.max_steps=2", "logger.tensorboard=false"]
    for seed in (0, 1, 2):
        code, out, err = cli(["train", *small, f"seed={seed}"])
        assert code == 0, err
    base = tmp_path / "outputs" / "train" / "2026-12-07"
    assert sorted(p.name for p in base.iterdir()) == ["09-00-00", "09-00-00-1", "09-00-00-2"]
    seeds = [json.loads((base / name / "result.json").read_text())["seed"] for name in ("09-00-00", "09-00-00-1",
                                                                                         "09-00-00-2")]
    assert seeds == [0, 1, 2] and "nodex: run dir: outputs/train/2026-12-07/09-00-00-2" in out
