"""`nodex report` (grouping, mean ± std over seeds, failed runs, paper values, formats),
`nodex list`, and the paper-values registry."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml
from conftest import FAST

from nodex.paper.experiments import EXPERIMENT_DIR, describe, header, discover
from nodex.paper.checks import Check
from nodex.paper.claims import CLAIMS
from nodex.paper.paper_values import PAPER_VALUES, paper_value
from nodex.report import find_runs, render


def fake_run(root: Path, name: str, *, model="vanilla", data="rings", seed=0, acc=None, status="completed",
             error=None, experiment=None, choice_experiment=None, lr=0.005, overrides=(), nfe=20.0, params=1224,
             trainer=None, metrics=None, choices=None) -> Path:
    """A run directory as nodex writes it: result.json + .hydra/{overrides,hydra}.yaml. ``trainer``: more
    ``trainer`` config keys; ``metrics``: more test metrics; ``choices``: more of Hydra's preset choices."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {"model": {"name": model}, "data": {"name": data}, "solver": {"method": "dopri5"},
              "trainer": {"optim": {"lr": lr}, **(trainer or {})}, "seed": seed, "experiment_name": experiment}
    result = {"status": status, "error": error, "metrics": {} if acc is None else {"test/accuracy": acc, "test/loss": 1 - acc, **(metrics or {})},
              "nfe_forward": nfe, "nfe_backward": 0.0, "params": params, "steps": 5, "wall_time_s": 1.5,
              "config": config, "seed": seed}
    (run / "result.json").write_text(json.dumps(result))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}", *overrides]))
    all_choices = {"experiment": choice_experiment, **(choices or {})}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": "train"}, "runtime": {"choices": all_choices}}}))
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for seed, acc in enumerate([0.90, 0.92, 0.94]):
        fake_run(root, f"{seed}-vanilla", seed=seed, acc=acc)
    for seed, acc in enumerate([0.80, 0.90]):
        fake_run(root, f"{seed + 3}-depthcat", model="depthcat", seed=seed, acc=acc, nfe=26.0, params=1288)
    fake_run(root, "5-vanilla-failed", seed=9, status="failed", error="step 3: solver failed (underflow in dt)")
    return root


def test_groups_average_over_seeds_and_failed_runs_are_listed_not_averaged(sweep):
    runs = find_runs([sweep])
    payload = json.loads(render(runs, ["model", "data"], ["test/accuracy", "nfe_forward", "params"], "json"))
    groups = {g["model"]: g for g in payload["groups"]}
    van, dc = groups["vanilla"], groups["depthcat"]
    assert (van["n"], van["failed"], dc["n"], dc["failed"]) == (3, 1, 2, 0)
    assert van["metrics"]["test/accuracy"]["mean"] == pytest.approx(0.92)
    assert van["metrics"]["test/accuracy"]["std"] == pytest.approx(0.02)  # sample std (n - 1)
    assert dc["metrics"]["test/accuracy"]["std"] == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert dc["metrics"]["params"]["mean"] == 1288 and dc["metrics"]["nfe_forward"]["mean"] == 26
    assert van["failed_runs"][0]["error"] == "step 3: solver failed (underflow in dt)"

    text = render(runs, ["model", "data"], ["test/accuracy", "params"], "markdown")
    lines = text.splitlines()
    assert lines[0] == "| model | data | n | failed | test/accuracy | params |"
    assert "| vanilla | rings | 3 | 1 | 0.92 ± 0.02 | 1224 |" in lines
    assert "| depthcat | rings | 2 | 0 | 0.85 ± 0.071 | 1288 |" in lines
    assert "Failed or interrupted runs (1):" in text and "5-vanilla-failed`: failed: step 3: solver failed" in text


def test_csv_rows_and_dotted_group_keys(tmp_path):
    root = tmp_path / "lr"
    for i, (lr, acc) in enumerate([(0.01, 0.5), (0.01, 0.7), (0.001, 0.9)]):
        fake_run(root, f"{i}", lr=lr, seed=i, acc=acc, overrides=[f"trainer.optim.lr={lr}"])
    rows = list(csv.DictReader(io.StringIO(render(find_runs([root]), ["trainer.optim.lr"], ["test/accuracy"], "csv"))))
    assert [(r["trainer.optim.lr"], r["n"], float(r["test/accuracy_mean"])) for r in rows] == [("0.001", "1", 0.9), ("0.01", "2", pytest.approx(0.6))]
    # auto: the swept override key joins model and data; seeds never do
    text = render(find_runs([root]), None, ["test/accuracy"])
    assert text.splitlines()[0] == "| model | data | trainer.optim.lr | n | failed | test/accuracy |"


def test_auto_groups_only_by_keys_that_change_results(tmp_path):
    """Runs that differ in seeds, output dirs, progress, resume, logging, checkpointing or threads are one group;
    a swept budget splits them."""
    root = tmp_path / "ui"
    ui = [({"progress": True, "resume": None, "num_threads": 1, "checkpoint_every": 10, "log_every": 5}, "true"),
          ({"progress": False, "resume": "auto", "num_threads": 2, "checkpoint_every": 20, "log_every": 10}, "false")]
    for i, (max_steps, (keys, flag)) in enumerate([(50, ui[0]), (50, ui[1]), (80, ui[0]), (80, ui[1])]):
        overrides = [f"trainer.max_steps={max_steps}", f"trainer.progress={flag}", f"trainer.resume={keys['resume']}",
                     f"trainer.num_threads={keys['num_threads']}", f"trainer.checkpoint_every={keys['checkpoint_every']}",
                     f"trainer.log_every={keys['log_every']}", f"logger.tensorboard={flag}", f"hydra.run.dir=out/{i}",
                     "hydra/launcher=joblib" if i % 2 else "hydra/launcher=basic"]
        fake_run(root, str(i), seed=i, acc=0.5 + i / 10, trainer={"max_steps": max_steps, **keys}, overrides=overrides)
    text = render(find_runs([root]), None, ["test/accuracy"])
    assert text.splitlines()[:4] == ["| model | data | trainer.max_steps | n | failed | test/accuracy |", "|---|---|---|---|---|---|",
                                     "| vanilla | rings | 50 | 2 | 0 | 0.55 ± 0.071 |", "| vanilla | rings | 80 | 2 | 0 | 0.75 ± 0.071 |"]


def test_model_column_shows_the_preset_and_duplicate_columns_are_dropped_or_explained(tmp_path):
    root = tmp_path / "dup"
    same = {"test/loss_terminal": 0.25, "test/nfe_forward": 14.0}
    for seed in (0, 1):  # an experiment renames model.name; the preset Hydra chose is data_control
        fake_run(root, f"dc{seed}", model="annuli_data_control", experiment="annuli_data_control", seed=seed, acc=0.75,
                 metrics=same, choices={"model": "data_control"})
    runs = find_runs([root])
    text = render(runs, None, None)  # no paper lookup: no paper columns
    assert text.splitlines()[0] == ("| experiment | model | data | n | failed | test/accuracy | test/loss | test/nfe_forward | "
                                    "nfe_forward | params | wall_time_s |")
    assert text.splitlines()[2] == "| annuli_data_control | data_control | rings | 2 | 0 | 0.75 | 0.25 | 14 | 20 | 1224 | 1.5 |"
    assert text.splitlines()[5] == (
        "test/nfe_forward: mean function evaluations per test batch (one forward solve, no gradients); "
        "nfe_forward: mean function evaluations of the forward solve per training step.")
    payload = json.loads(render(runs, None, None, "json"))
    assert payload["groups"][0]["model"] == "data_control" and "test/loss_terminal" not in payload["metrics"]
    assert payload["notes"]["test/nfe_forward"].startswith("mean function evaluations per test batch")
    # with an integral loss test/loss_terminal is a different number: kept, and explained
    fake_run(root, "il", seed=2, acc=0.75, metrics={"test/loss_terminal": 0.2, "test/nfe_forward": 14.0})
    text = render(find_runs([root]), ["model"], None)
    assert text.splitlines()[0].startswith("| model | n | failed | test/accuracy | test/loss | test/loss_terminal |")
    assert "test/loss_terminal: the terminal part of test/loss (test/loss adds the integral loss)" in text


def test_paper_values_sit_beside_ours_and_experiment_comes_from_the_run(tmp_path):
    root = tmp_path / "t"
    fake_run(root, "a", experiment="table1_cifar10_ilnode", acc=0.70, params=36088, seed=0)
    fake_run(root, "b", choice_experiment="table1_cifar10_ilnode", acc=0.72, params=36088, seed=1)  # older run: only Hydra's choice
    fake_run(root, "c", experiment="reflection_vanilla", acc=0.5)
    runs = find_runs([root])
    assert sorted(r.experiment for r in runs) == ["reflection_vanilla", "table1_cifar10_ilnode", "table1_cifar10_ilnode"]
    text = render(runs, ["experiment"], ["test/accuracy", "params"], paper=paper_value)
    assert text.splitlines()[0] == "| experiment | n | failed | test/accuracy | test/accuracy (paper) | params | params (paper) |"
    assert "| table1_cifar10_ilnode | 2 | 0 | 0.71 ± 0.014 | 73.4% | 36088 | 36.1K |" in text
    assert "| reflection_vanilla | 1 | 0 | 0.5 |  | 1224 |  |" in text
    assert "Paper values: paper's results table" in text
    record = json.loads(render(runs, ["experiment"], ["test/accuracy"], "json", paper=paper_value))["groups"][1]["metrics"]["test/accuracy"]
    assert record["paper"] == 0.734 and "poster" in record["paper_source"]
    assert "(paper)" not in render(runs, ["experiment"], ["test/accuracy"])


def test_a_killed_job_without_result_json_counts_as_failed(tmp_path):
    root = tmp_path / "s"
    fake_run(root, "0", acc=0.9)
    dead = fake_run(root, "1", acc=0.1)
    (dead / "result.json").unlink()
    (dead / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "vanilla"}, "data": {"name": "rings"}}))
    payload = json.loads(render(find_runs([root]), ["model"], ["test/accuracy"], "json"))
    group = payload["groups"][0]
    assert (group["n"], group["failed"]) == (1, 1) and group["metrics"]["test/accuracy"]["mean"] == 0.9
    assert group["failed_runs"][0]["status"] == "missing"


def test_report_command_formats_and_errors(cli, sweep, tmp_path):
    code, out, err = cli(["report", str(sweep), "--by", "model", "--metrics", "accuracy,wall_time_s", "--format", "json"])
    assert code == 0, err
    payload = json.loads(out)
    assert payload["by"] == ["model"] and payload["metrics"] == ["accuracy", "wall_time_s"]
    assert {g["model"]: g["metrics"]["accuracy"]["n"] for g in payload["groups"]} == {"depthcat": 2, "vanilla": 3}
    code, out, err = cli(["report", str(sweep), "--metrics", "test/bogus"])
    assert code == 2 and "no run has --metrics test/bogus; choose from:" in err and "test/accuracy" in err
    code, out, err = cli(["report", str(tmp_path / "nowhere")])
    assert code == 2 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, out, err = cli(["report", str(tmp_path / "empty")])
    assert code == 2 and "no result.json under" in err
    code, out, err = cli(["report", str(sweep), "-o", str(tmp_path / "t.csv"), "--format", "csv"])
    assert code == 0 and (tmp_path / "t.csv").read_text().splitlines()[0].startswith("model,data,n,failed,test/accuracy_mean")


@pytest.mark.slow
def test_report_of_a_real_multirun_averages_its_seeds(cli, tmp_path):
    sweep = tmp_path / "m"
    code, _, err = cli(["train", "--multirun", *FAST, "trainer.max_steps=5", "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    code, out, err = cli(["report", str(sweep), "--metrics", "test/accuracy,nfe_forward", "--format", "json"])
    assert code == 0, err
    (group,) = json.loads(out)["groups"]
    assert (group["model"], group["data"], group["n"]) == ("vanilla", "rings", 2)
    accs = [r["metrics"]["test/accuracy"] for r in results]
    assert group["metrics"]["test/accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert group["metrics"]["nfe_forward"]["mean"] == pytest.approx(sum(r["nfe_forward"] for r in results) / 2)


def test_list_shows_every_experiment_with_its_whole_description_wrapped(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = cli(["list"])
    assert code == 0, err
    files = sorted(EXPERIMENT_DIR.glob("*.yaml"))
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1] == f"{len(files)} experiments; run one with: nodex train experiment=NAME"
    assert all(len(ln) <= 100 or len(ln[37:].split()) == 1 for ln in lines)  # only an unbreakable word runs over
    listed: dict[str, list[str]] = {}
    for ln in lines[:-1]:
        if not ln.startswith(" "):
            name, _, text = ln.partition("  ")
            listed[name.strip()] = [text.strip()]
        else:
            listed[list(listed)[-1]].append(ln.strip())
    assert set(listed) == {p.stem for p in files}
    for path in files:
        assert " ".join(listed[path.stem]).split() == header(path).split()  # every word of the header paragraph
        assert header(path).startswith(describe(path))
    code, out, _ = cli(["list", "reflection_*", "--names"])
    assert code == 0 and out.split() == sorted(p.stem for p in files if p.stem.startswith("reflection_"))
    code, out, _ = cli(["list", "no_such_*"])
    assert code == 1 and "no experiment matches" in out
    f = tmp_path / "x.yaml"
    f.write_text("# @package _global_\n\n#   Paper §9: a thing\n# more\n#\n# later\nkey: 1\n")
    assert describe(f) == "Paper §9: a thing" and header(f) == "Paper §9: a thing more"


@pytest.mark.slow
def test_every_experiment_records_its_own_name(compose_cfg):
    """result.json["config"]["experiment_name"] names the experiment file a run came from: each file sets its own
    (its body comes after its defaults, so it wins over an experiment it extends: checked composed for one)."""
    import yaml

    for exp in discover():
        body = yaml.safe_load(Path(exp.path).read_text())
        assert body.get("experiment_name") == exp.name, f"{exp.path}: add `experiment_name: {exp.name}`"
    assert compose_cfg(["experiment=annuli_data_control"]).experiment_name == "annuli_data_control"  # extends vanilla
    assert compose_cfg([]).experiment_name is None


def test_paper_registry_names_existing_experiments_and_checks_evaluate():
    names = {e.name for e in discover()}
    assert set(PAPER_VALUES) <= names, set(PAPER_VALUES) - names
    assert PAPER_VALUES["table1_cifar10_ilnode"]["params"].value == 36088
    assert PAPER_VALUES["table1_mnist_second_order"]["test/accuracy"].value == pytest.approx(0.992)
    assert {c.id for c in CLAIMS} >= {"3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9"}
    stats = {("a", "m"): (0.95, 0.01, 3), ("b", "m"): (0.90, 0.0, 1), ("c", "m"): (0.50, 0.0, 1)}
    lookup = lambda label, metric: stats.get((label, metric))  # noqa: E731
    assert Check("x", "m", "approx", "a", 0.96, tol=0.02).evaluate(lookup) == ("0.95 ± 0.01 (n=3)", True)
    assert Check("x", "m", "approx", "a", 0.99, tol=0.02).evaluate(lookup)[1] is False
    assert Check("x", "m", "rel", "c", 0.4, tol=0.5).evaluate(lookup)[1] is True
    assert Check("x", "m", "lt_run", "c", "b").evaluate(lookup) == ("0.5 vs 0.9", True)
    assert Check("x", "m", "order", runs=(("a",), ("b", "c"))).evaluate(lookup)[1] is True
    assert Check("x", "m", "order", runs=(("c",), ("a",)), tol=0.1).evaluate(lookup)[1] is False
    assert Check("x", "m", "order", runs=(("b",), ("a",)), tol=0.06).evaluate(lookup)[1] is True  # within the slack
    assert Check("x", "m", "ge", "zzz", 0.5).evaluate(lookup) == ("not run", None)


@pytest.mark.slow
def test_an_ensemble_reports_as_its_members(cli, tmp_path):
    run_dir = tmp_path / "ens"
    code, _, err = cli(["train", *FAST, "trainer.max_steps=4", "solver=rk4", "trainer.ensemble=2", f"hydra.run.dir={run_dir}"])
    assert code == 0, err
    runs = find_runs([run_dir])
    assert sorted(r.path.name for r in runs) == ["member-0", "member-1"]
    assert all(r.ok for r in runs) and sorted(r.result["seed"] for r in runs) == [0, 1]


def test_a_run_reached_twice_through_a_symlink_counts_once_and_a_nan_metric_is_nan(tmp_path):
    root = tmp_path / "s"
    fake_run(root, "0", seed=0, acc=0.9)
    fake_run(root, "1", seed=1, acc=0.8)
    (tmp_path / "link").symlink_to(root)
    group = json.loads(render(find_runs([root, tmp_path / "link"]), ["model"], ["test/accuracy"], "json"))["groups"][0]
    assert group["n"] == 2 and group["metrics"]["test/accuracy"]["std"] == pytest.approx(statistics.stdev([0.9, 0.8]))
    odd = json.loads((root / "1" / "result.json").read_text())
    odd["metrics"]["test/accuracy"] = float("nan")
    (root / "1" / "result.json").write_text(json.dumps(odd))  # json writes NaN, as Python's json module reads it
    text = render(find_runs([root]), ["model"], ["test/accuracy"], "markdown")  # statistics.stdev raised before
    assert "nan" in text


def test_report_output_onto_a_run_record_is_refused(cli, sweep):
    record = next(sweep.glob("0-*/result.json"))
    before = record.read_bytes()
    code, out, err = cli(["report", str(sweep), "-o", str(record)])
    assert code == 2 and err.strip() == (f"nodex: error: -o {record} is a run's record (result.json, ensemble.json or "
                                         "eval.json); write the report to another file")
    assert record.read_bytes() == before


def test_report_output_format_follows_the_suffix_unless_given(cli, sweep, tmp_path):
    assert cli(["report", str(sweep), "-o", str(tmp_path / "t.csv")])[0] == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[0].startswith("model,")  # Markdown in a .csv before
    assert cli(["report", str(sweep), "-o", str(tmp_path / "t.json")])[0] == 0
    assert "groups" in json.loads((tmp_path / "t.json").read_text())
    assert cli(["report", str(sweep), "-o", str(tmp_path / "t.txt"), "--format", "csv"])[0] == 0
    assert (tmp_path / "t.txt").read_text().startswith("model,")
