"""Project basics and runs you can find: the printed run dir, name= in the default run/sweep dir, LICENSE,
CITATION.cff, ``nodex --version``, shell completion, and no internal ``schema*`` options on the command line."""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from conftest import FAST
from nodex.jobs import run_dir_suffix

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("adaptive_depth, anode, cnf, cnf_data_control, data_control, depthcat, galnode, ilnode, node_conv, "
          "second_order, stacked, vanilla")
DATE_TIME = r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d"


def test_run_dir_suffix_prefers_name_then_experiment():
    assert run_dir_suffix("mine", "annuli_vanilla") == "-mine"
    assert run_dir_suffix(None, "annuli_vanilla") == "-annuli_vanilla"
    assert run_dir_suffix(None, None) == ""
    assert run_dir_suffix("a/b", None) == "-a%2Fb"  # one folder, never a nested one


@pytest.mark.slow
@pytest.mark.parametrize("extra,suffix", [([], ""), (["name=mine"], "-mine"),
                                          (["experiment=annuli_vanilla"], "-annuli_vanilla"),
                                          (["experiment=annuli_vanilla", "name=mine"], "-mine")])
def test_default_run_dir_is_printed_and_named(cli, tmp_path, monkeypatch, extra, suffix):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", *FAST, "trainer.max_steps=2", "data.n_train=64", "data.n_val=64",
                          "data.n_test=64", *extra])
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"nodex: run dir: outputs/train/{DATE_TIME}{suffix}", last), last
    run_dir = tmp_path / last.removeprefix("nodex: run dir: ")
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_a_failed_run_prints_its_run_dir_and_one_error_line(cli, tmp_path):
    run_dir = tmp_path / "r"
    code, out, err = cli(["train", "solver.rtol=-1", f"hydra.run.dir={run_dir}"])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "solver.rtol=-1" in err
    assert out.strip().splitlines()[-1] == f"nodex: run dir: {run_dir}"  # outside the cwd: absolute
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_named_sweep_dir_and_its_summary(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", "--multirun", *FAST, "trainer.max_steps=2", "seed=0,1", "name=seeds"])
    assert code == 0, err
    sweeps = list((tmp_path / "outputs" / "train" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and re.fullmatch(r"\d\d-\d\d-\d\d-seeds", sweeps[0].name)
    assert len(list(sweeps[0].glob("*/result.json"))) == 2
    assert "nodex: sweep finished: 2/2 jobs completed in" in out and "nodex: run dir:" not in out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(cli, flag):
    assert cli([flag]) == (0, f"nodex {version('nodex')}\n", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version("nodex"))


def test_license_and_citation():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the nodex authors" in license_text
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = citation["preferred-citation"]
    assert paper["title"] == "Dissecting Neural ODEs" and paper["year"] == 2020
    assert [a["family-names"] for a in paper["authors"]] == ["Massaroli", "Poli", "Park", "Yamashita", "Asama"]
    assert citation["type"] == "software" and citation["version"] == version("nodex")


@pytest.mark.parametrize("flag", ["--shell-completion", "-sc"])
def test_completion_flag_without_a_shell_is_one_line(cli, flag):
    code, out, err = cli(["train", flag])
    assert code == 2 and out == ""
    assert err == (f'nodex: error: {flag} needs install=SHELL: add eval "$(nodex train -sc install=bash)" to '
                   "~/.bashrc (or install=zsh, install=fish)\n")


def test_completion_install_and_query(cli, monkeypatch):
    code, out, _ = cli(["train", "-sc", "install=bash"])
    assert code == 0 and "complete -o nospace -o default -F hydra_bash_completion nodex" in out
    monkeypatch.setenv("COMP_LINE", "nodex train model=")
    monkeypatch.setenv("COMP_POINT", str(len("nodex train model=")))
    code, out, _ = cli(["-sc", "query=bash"])
    assert code == 0 and out.split() == [f"model={m}" for m in MODELS.split(", ")]


def test_help_lists_no_schema_options(cli):
    code, out, _ = cli(["train", "--help"])
    assert code == 0 and "schema" not in out
    assert f"model: {MODELS}" in out.splitlines()


@pytest.mark.parametrize("args,line", [
    (["model=schema"], f"unknown model 'schema'; choose one of: {MODELS}"),
    (["--multirun", "model=vanilla,schema_cnf"], f"unknown model 'schema_cnf'; choose one of: {MODELS}"),
    (["solver=schema"], "unknown solver 'schema'; choose one of: adaptive_heun, bosh3, dopri5, dopri8, euler, "
                        "midpoint, rk4, tsit5"),
    (["model=nope"], f"unknown model 'nope'; choose one of: {MODELS}"),
])
def test_schema_options_are_refused_like_unknown_ones(cli, tmp_path, args, line):
    code, out, err = cli(["train", *args, f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert (code, err) == (2, f"nodex: error: {line}\n")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_readme_documents_citing_and_completion():
    readme = (ROOT / "README.md").read_text()
    assert "## Citing" in readme and 'eval "$(nodex train -sc install=bash)"' in readme
    assert os.path.exists(ROOT / "CITATION.cff")
