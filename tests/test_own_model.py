"""A user's own field and dataset, from a folder outside the repository: the README's example, copied out and run
as written (train, eval under another solver, load, resume, a seed ensemble, a sweep, report), the slot groups'
composition, and the contracts' one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

import nodex
from nodex.errors import ConfigError, DataError

README = Path(__file__).resolve().parents[1] / "README.md"
NODEX = Path(sys.executable).parent / "nodex"  # the console script a user runs (not `python -m`, which adds cwd)


def readme_project(dest: Path) -> Path:
    """Write the files of README's "Your own model and data" example under ``dest``; returns the project folder."""
    section = README.read_text().split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"\*\*`myproject/([^`]+)`\*\*\n\n```\w*\n(.*?)```", section, flags=re.S)
    assert {name for name, _ in files} == {"mynode.py", "conf/model/field/sine.yaml", "conf/data/two_spirals.yaml"}
    for name, text in files:
        (dest / "myproject" / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / "myproject" / name).write_text(text)
    return dest / "myproject"


def readme_commands() -> list[list[str]]:
    section = README.read_text().split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"\*\*The commands\*\*.*?```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("#")[0].split() for line in block.splitlines() if line.strip()]


def run(project: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(NODEX), *args], cwd=project, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "PYTHONPATH": "", **env})
    return proc


SHORT = ["trainer.max_steps=20", "trainer.val_every=10", "trainer.log_every=10", "trainer.checkpoint_every=10",
         "trainer.plots=false", "logger.tensorboard=false"]


@pytest.mark.slow
def test_the_readme_example_runs_from_a_folder_outside_the_repo(tmp_path):
    project = readme_project(tmp_path)
    commands = readme_commands()
    assert commands[0][:2] == ["nodex", "train"] and commands[-1][:2] == ["nodex", "eval"]
    proc = run(project, [*commands[0][1:], *SHORT, "hydra.run.dir=runs/sine"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((project / "runs/sine/result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 20
    assert result["params"] == (2 * 64 + 64 + 64 * 2 + 2) + (2 * 2 + 2)  # SineField(dim=2, width=64) + linear h_y
    assert "runs/sine" in proc.stdout + proc.stderr  # the run dir is printed

    # nodex eval from another folder: the run's own folder is searched for mynode; rk4 at 0.25 is 16 evaluations
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [a.replace("RUN_DIR", str(project / "runs/sine")) for a in commands[-1][1:]]
    proc = run(elsewhere, [*args, "hydra.run.dir=ev"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads((elsewhere / "ev/eval.json").read_text())
    assert ev["metrics"]["test/nfe_forward"] == 16 and ev["applied"]["solver.method"] == "rk4"

    # its figures, redrawn from the checkpoint as a PDF (the data's shape chooses them: a 2-D classifier's map)
    proc = run(elsewhere, ["plot", f"ckpt={project / 'runs/sine'}", "figures=decision_map", "format=pdf",
                           "hydra.run.dir=pl"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    pdf = project / "runs/sine/plots/redrawn-last/decision_map.pdf"
    assert pdf.read_bytes()[:4] == b"%PDF"

    # resume the finished run for 10 more steps: it continues from step 20
    proc = run(project, [*commands[0][1:], *SHORT[1:], "trainer.max_steps=30", "trainer.resume=auto",
                         "hydra.run.dir=runs/sine"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((project / "runs/sine/result.json").read_text())["steps"] == 30
    assert "resumed from" in (project / "runs/sine/train.log").read_text()

    # resumed once more from another folder (its modules are still the project's), then evaluated from a third:
    # the run keeps every folder it was started from, so mynode is found
    run_dir, third = project / "runs/sine", tmp_path / "third"
    third.mkdir()
    train = [str(project / "conf") if a == "conf" else a for a in commands[0][1:]]  # --config-dir conf
    proc = run(elsewhere, [*train, *SHORT[1:], "trainer.max_steps=40", "trainer.resume=auto",
                           f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 40
    proc = run(third, [*args, "hydra.run.dir=ev"])
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_own_field_in_an_ensemble_and_a_sweep_and_report(tmp_path):
    project = readme_project(tmp_path)
    proc = run(project, ["train", "--config-dir", "conf", "model/field=sine", "data=two_spirals", "trainer.ensemble=2",
                         *SHORT, "hydra.run.dir=runs/ens"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    members = [json.loads((project / f"runs/ens/member-{k}/result.json").read_text()) for k in range(2)]
    assert [m["seed"] for m in members] == [0, 1] and all(m["status"] == "completed" for m in members)
    proc = run(project, ["train", "--config-dir", "conf", "--multirun", "model/field=sine,mlp", "data=two_spirals",
                         *SHORT, "hydra.sweep.dir=runs/sweep"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(project, ["report", "runs/sweep", "--by", "model/field", "--format", "csv"])
    assert proc.returncode == 0, proc.stderr
    assert "sine" in proc.stdout and "mlp" in proc.stdout


def test_own_options_compose_and_build_in_process(tmp_path, monkeypatch):
    project = readme_project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cwd fallback appends to it; undone after the test
    cfg = nodex.compose([f"hydra.searchpath=[file://{project / 'conf'}]", "model=galnode", "model/field=sine",
                         "data=two_spirals"])
    assert dict(cfg.model.field) == {"_target_": "mynode.SineField", "width": 64}  # nothing of galnode's field
    model = nodex.build(cfg)
    X, y = nodex.load_data(cfg).train
    assert X.shape == (512, 2) and y.dtype == torch.long
    assert model(X[:5]).y_hat.shape == (5, 2)
    assert type(model.field.f).__name__ == "SineField" and model.field.f.inner.out_features == 64


@pytest.mark.slow
def test_built_in_presets_are_compositions_of_slot_options(compose_cfg):
    plain = compose_cfg(["model=vanilla"])
    swapped = compose_cfg(["model=vanilla", "model/field=mlp_depthcat"])
    assert plain.model.field.depth == "none" and swapped.model.field.depth == "concat"
    assert swapped.model.field == compose_cfg(["model=depthcat"]).model.field
    assert compose_cfg(["model=anode", "model/readout=linear"]).model.readout == {"kind": "linear"}


def _write(project: Path, name: str, text: str) -> None:
    (project / name).parent.mkdir(parents=True, exist_ok=True)
    (project / name).write_text(text)


def _field(tmp_path: Path, monkeypatch, module: str, text: str, node: dict):
    """Write ``module.py`` into ``tmp_path`` (the working directory for the test) and build the field ``node``."""
    from omegaconf import OmegaConf

    from nodex.models.build import build_field

    _write(tmp_path, f"{module}.py", text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cwd fallback appends to it; undone after the test
    return build_field(OmegaConf.create(node), (2,), (2,), None, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("module,yaml,message", [
    ("def make(seed):\n    return 42\n", "_target_: baddata.make\n", "returned a int; it must return (train, val, test)"),
    ("import torch\ndef make(seed):\n    x = torch.zeros(4, 2)\n    return (x, torch.zeros(3)), None, (x, torch.zeros(4))\n",
     "_target_: baddata.make\n", "train split has X (4, 2) and y (3,)"),
    ("", "_target_: nowhere.make\n", "no module named 'nowhere'; run nodex from the folder that holds it"),
    ("def make(seed):\n    pass\n", "_target_: baddata.make\nsize: 3\n", "baddata.make(size=..., seed=...) failed"),
])
def test_a_bad_dataset_target_is_one_line(tmp_path, cli, monkeypatch, module, yaml, message):
    project, unique = tmp_path / "p", f"baddata_{uuid.uuid4().hex[:8]}"  # a module name no earlier case imported
    module, yaml, message = (text.replace("baddata", unique) for text in (module, yaml, message))
    _write(project, f"{unique}.py", module)
    _write(project, "conf/data/bad.yaml", yaml)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, _, err = cli(["train", "--config-dir", str(project / "conf"), "data=bad", "trainer.max_steps=1",
                        f"hydra.run.dir={tmp_path / 'run'}"])
    assert code != 0 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def test_field_contract_errors_name_the_fix(tmp_path, monkeypatch):
    text = ("from torch import nn\nclass F(nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"
            "    def forward(self, a, b, c, d):\n        return b\n")
    with pytest.raises(ConfigError, match=r"takes 4 positional arguments; a field's must be forward\(z\) or"):
        _field(tmp_path, monkeypatch, "fields3", text, {"_target_": "fields3.F"})
    with pytest.raises(ConfigError, match="must be a dotted import path"):
        _field(tmp_path, monkeypatch, "fields3", text, {"_target_": "F"})
    with pytest.raises(ConfigError, match="has no callable 'G'"):
        _field(tmp_path, monkeypatch, "fields3", text, {"_target_": "fields3.G"})


def test_field_conventions_and_a_plain_function(tmp_path, monkeypatch):
    text = ("import torch\nfrom torch import nn\ndef decay(rate=1.0):\n    return lambda s, z: -rate * z\n"
            "def seq(dim):\n    return nn.Sequential(nn.Linear(dim, dim))\n")
    z = torch.randn(3, 2)
    f = _field(tmp_path, monkeypatch, "fieldsx", text, {"_target_": "fieldsx.decay", "rate": 2.0})
    assert torch.equal(f(torch.tensor(0.0), z), -2.0 * z) and not list(f.parameters())
    g = _field(tmp_path, monkeypatch, "fieldsx", text, {"_target_": "fieldsx.seq"})
    assert g(torch.tensor(0.0), z).shape == (3, 2) and len(list(g.parameters())) == 2


@pytest.mark.slow
def test_a_dataset_without_validation_split_trains_and_keeps_no_best(tmp_path, cli, monkeypatch):
    project = tmp_path / "p"
    _write(project, "noval.py", "import torch\ndef make(seed):\n    g = torch.Generator().manual_seed(seed)\n"
                                "    X = torch.randn(64, 2, generator=g)\n    y = (X[:, 0] > 0).long()\n"
                                "    return (X, y), None, (X, y)\n")
    _write(project, "conf/data/noval.yaml", "_target_: noval.make\n")
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, _, err = cli(["train", "--config-dir", str(project / "conf"), "data=noval", *SHORT,
                        f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, err
    assert (tmp_path / "run/checkpoints/last.pt").is_file() and not (tmp_path / "run/checkpoints/best.pt").exists()
    with pytest.raises(DataError):
        from nodex.data.user import target_data
        from omegaconf import OmegaConf

        _write(project, "twosplits.py", "def make():\n    return 1, 2\n")
        target_data(OmegaConf.create({"_target_": "twosplits.make"}), 0)


@pytest.mark.slow
def test_eval_of_a_user_data_run_refuses_another_user_dataset(tmp_path, cli, monkeypatch):
    """Two datasets of the user's own have no name: eval told them apart by name (None == None) and evaluated the
    run's own data under ``data=other``, exit 0."""
    project = tmp_path / "p"
    for name, cut in (("mine", 0), ("other", 1)):
        _write(project, f"{name}.py", "import torch\ndef make(seed):\n    g = torch.Generator().manual_seed(seed)\n"
                                      f"    X = torch.randn(64, 2, generator=g)\n    y = (X[:, {cut}] > 0).long()\n"
                                      "    return (X, y), (X, y), (X, y)\n")
        _write(project, f"conf/data/{name}.yaml", f"_target_: {name}.make\n")
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    conf = ["--config-dir", str(project / "conf")]
    assert cli(["train", *conf, "data=mine", *SHORT, f"hydra.run.dir={tmp_path / 'run'}"])[0] == 0
    code, _, err = cli(["eval", *conf, f"ckpt={tmp_path / 'run'}", "data=mine", f"hydra.run.dir={tmp_path / 'e1'}"])
    assert code == 0, err
    code, _, err = cli(["eval", *conf, f"ckpt={tmp_path / 'run'}", "data=other", f"hydra.run.dir={tmp_path / 'e2'}"])
    assert code == 2 and err.strip() == ("nodex: error: data=other does not fit the checkpoint (trained with "
                                         "data=mine.make); nodex eval cannot switch it: train a new run with data=other")
    assert not (tmp_path / "e2" / "eval.json").exists()


def test_a_plain_function_a_partial_and_a_class_without_init_are_fields(tmp_path, monkeypatch):
    text = ("import torch\nfrom torch import nn\ndef neg(z):\n    return -z\ndef scaled(s, z, scale=1.0):\n"
            "    return scale * s * z\nclass NoInit(nn.Module):\n    def forward(self, s, z):\n        return -2 * z\n")
    z, s = torch.randn(3, 2), torch.tensor(0.5)
    f = _field(tmp_path, monkeypatch, "fieldsp", text, {"_target_": "fieldsp.neg"})  # the function is the field
    assert torch.equal(f(s, z), -z)
    g = _field(tmp_path, monkeypatch, "fieldsp", text, {"_target_": "fieldsp.scaled", "_partial_": True, "scale": 3.0})
    assert torch.allclose(g(s, z), 1.5 * z)
    h = _field(tmp_path, monkeypatch, "fieldsp", text, {"_target_": "fieldsp.NoInit"})  # nn.Module's own __init__
    assert torch.equal(h(s, z), -2 * z)
    with pytest.raises(ConfigError, match=r"model.field._partial_='yes' must be true or false"):
        _field(tmp_path, monkeypatch, "fieldsp", text, {"_target_": "fieldsp.neg", "_partial_": "yes"})


def test_a_field_or_readout_of_the_wrong_shape_or_dtype_is_one_line(tmp_path, monkeypatch):
    text = ("import torch\nfrom torch import nn\ndef one_column(z):\n    return z[:, :1]\n"
            "def double(z):\n    return z.double()\ndef wide(dim, n_outputs):\n    return nn.Linear(dim, n_outputs + 3)\n"
            "def weights64(dim):\n    return nn.Linear(dim, dim).double()\n")
    z = torch.randn(3, 2)
    f = _field(tmp_path, monkeypatch, "fieldsw", text, {"_target_": "fieldsw.one_column"})
    with pytest.raises(ConfigError, match=r"model.field \(fieldsw.one_column\) returned \(3, 1\) torch.float32 for "
                                          r"the state \(3, 2\) torch.float32; dz/ds must be a tensor \(3, 2\)"):
        f(torch.tensor(0.0), z)  # it would broadcast into the state silently under a fixed grid
    with pytest.raises(ConfigError, match=r"returned \(3, 2\) torch.float64 for the state \(3, 2\) torch.float32"):
        _field(tmp_path, monkeypatch, "fieldsw", text, {"_target_": "fieldsw.double"})(torch.tensor(0.0), z)
    with pytest.raises(ConfigError, match=r"model.field \(fieldsw.weights64\) failed on the state \(3, 2\) "
                                          r"torch.float32 \(.*\): its parameters are torch.float64; make them the"):
        _field(tmp_path, monkeypatch, "fieldsw", text, {"_target_": "fieldsw.weights64"})(torch.tensor(0.0), z)
    from omegaconf import OmegaConf

    from nodex.models.user import build_target_readout

    with pytest.raises(ConfigError, match=r"model.readout: fieldsw.wide gives \(2, 5\) for 2 states \(2, 2\); it must "
                                          r"give \(B, 2\)"):
        build_target_readout(OmegaConf.create({"_target_": "fieldsw.wide"}), (2,), 2)


@pytest.mark.parametrize("labels, message", [
    ("torch.zeros(8).long()", "every label is 0, a single class: a classifier needs labels of at least two classes"),
    ("(torch.arange(8) % 2) * 5", "classes are 0..5 (the largest label + 1), but the training split has no sample "
                                  "of class 1, 2, 3, 4"),
    ("torch.zeros(8, 2).long()", "integer labels (8, 2) are class labels, one per sample"),
])
def test_user_labels_that_cannot_make_a_classifier_are_refused(tmp_path, monkeypatch, labels, message):
    from omegaconf import OmegaConf

    from nodex.data.user import target_data

    module = f"labels_{uuid.uuid4().hex[:8]}"
    _write(tmp_path, f"{module}.py", f"import torch\ndef make(seed):\n    X = torch.randn(8, 2)\n    y = {labels}\n"
                                     "    return (X, y), (X, y), (X, y)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(DataError, match=re.escape(message)):
        target_data(OmegaConf.create({"_target_": f"{module}.make"}), 0)


def test_an_error_inside_a_targets_init_is_named_as_such(tmp_path, monkeypatch):
    text = ("from torch import nn\nclass Boom(nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"
            "        raise ValueError('boom in init')\nclass BadType(nn.Module):\n    def __init__(self, dim):\n"
            "        super().__init__()\n        len(3)\n")
    with pytest.raises(ConfigError, match=r"^model.field: fieldsb.Boom\(dim=...\) raised ValueError: boom in init; "
                                          r"the arguments fit its signature, so the error is inside it$"):
        _field(tmp_path, monkeypatch, "fieldsb", text, {"_target_": "fieldsb.Boom"})
    with pytest.raises(ConfigError, match=r"fieldsb.BadType\(dim=...\) raised TypeError: object of type 'int' has "
                                          r"no len\(\); the arguments fit"):
        _field(tmp_path, monkeypatch, "fieldsb", text, {"_target_": "fieldsb.BadType"})
    with pytest.raises(ConfigError, match=r"fieldsb.Boom\(width=..., dim=...\) failed .*; set the keys it takes"):
        _field(tmp_path, monkeypatch, "fieldsb", text, {"_target_": "fieldsb.Boom", "width": 3})
