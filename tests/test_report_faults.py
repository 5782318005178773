"""``nodex report`` on what a file system and other tools leave behind: ``-o`` into a folder that does not exist,
an unwritable ``-o``, and ``result.json`` files of the wrong shape: one line each, naming the file, no traceback."""

from __future__ import annotations

import json

import pytest

from nodex.runs import new_result


def _run(root, name: str, body: str | bytes | None = None, accuracy: float = 0.9):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    if body is None:
        result = new_result(0, {"model": {"name": "vanilla"}, "data": {"name": "rings"}, "seed": 0})
        result.update(status="completed", metrics={"test/accuracy": accuracy}, steps=20)
        body = json.dumps(result)
    path = run_dir / "result.json"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def test_report_into_a_missing_folder_creates_it(cli, tmp_path):
    _run(tmp_path / "runs", "a")
    out_file = tmp_path / "not" / "yet" / "table.md"
    code, out, err = cli(["report", str(tmp_path / "runs"), "-o", str(out_file)])
    assert code == 0 and err == "" and out.strip() == f"wrote {out_file} (1 runs)"
    assert "0.9" in out_file.read_text()


def test_report_into_an_unwritable_path_is_one_line(cli, tmp_path):
    _run(tmp_path / "runs", "a")
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "table.md"  # its folder is a file
    code, out, err = cli(["report", str(tmp_path / "runs"), "-o", str(target)])
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [f"nodex: error: cannot write -o {target} (File exists); choose another path"]


@pytest.mark.parametrize("body, why", [
    ("[1, 2, 3]", "not a nodex result.json (not a JSON object)"),
    ('"completed"', "not a nodex result.json (not a JSON object)"),
    ('{"status": "completed"}', "not a nodex result.json ('metrics' missing or not a dict, 'config' missing or not a "
                                "dict)"),
    ('{"status": 3, "metrics": [], "config": {}}', "not a nodex result.json ('status' missing or not a str, 'metrics' "
                                                    "missing or not a dict)"),
    ('{"status": "completed", "metr', "Unterminated string starting at: line 1 column 25 (char 24)"),
    (b"\xff\xfe\x00garbage", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ("", "Expecting value: line 1 column 1 (char 0)"),
])
def test_a_result_json_of_the_wrong_shape_is_one_warning_naming_it(cli, tmp_path, body, why):
    _run(tmp_path / "runs", "good", accuracy=0.75)
    bad = _run(tmp_path / "runs", "bad", body)
    code, out, err = cli(["report", str(tmp_path / "runs"), "--format", "json"])
    assert code == 0
    assert err.strip().splitlines() == [f"nodex: warning: {bad}: {why}; reported as unreadable"]
    groups = json.loads(out)["groups"]
    good = [g for g in groups if g["model"] == "vanilla"]
    assert len(good) == 1 and good[0]["metrics"]["test/accuracy"]["mean"] == 0.75  # the good run is still reported
    unreadable = [r for g in groups for r in g["failed_runs"]]
    assert unreadable == [{"path": str(bad.parent), "status": "unreadable", "error": f"result.json unreadable: {why}"}]
