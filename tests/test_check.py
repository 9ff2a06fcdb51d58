"""`bsadvisor check` and the profile commands: CI capacity checks with no GPU."""

import json

import pytest
from typer.testing import CliRunner

from advisor.cli import app
from advisor.hardware.profiles import load, usable_bytes
from tests.models import MLP


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def check(path, *args):
    result = invoke("check", path, *args, "--json")
    doc = json.loads(result.stdout) if result.stdout.strip() else None
    return result, doc


@pytest.fixture
def mlp(write_model):
    return write_model(MLP)


def test_fits_exits_zero_and_reports_peak_budget_headroom(mlp):
    result, doc = check(mlp, "--profile", "t4-16gb", "--batch-size", "64")
    assert result.exit_code == 0, result.output
    assert doc["fits"] and doc["passed"] and doc["profile"] == "t4-16gb"
    assert doc["budget_bytes"] == pytest.approx(usable_bytes(load("t4-16gb")) * 0.9)
    assert doc["headroom_bytes"] == pytest.approx(doc["budget_bytes"] - doc["peak_bytes"])
    assert 0 < doc["peak_bytes"] < doc["budget_bytes"]


def test_boundary_is_consistent(mlp):
    """At the reported largest batch it fits; one more does not."""
    _, first = check(mlp, "--profile", "t4-16gb", "--batch-size", "8")
    largest = first["max_batch"]
    at, doc_at = check(mlp, "--profile", "t4-16gb", "--batch-size", largest)
    over, doc_over = check(mlp, "--profile", "t4-16gb", "--batch-size", largest + 1)
    assert at.exit_code == 0 and doc_at["fits"]
    assert over.exit_code == 1 and not doc_over["fits"]
    assert doc_over["peak_bytes"] > doc_over["budget_bytes"] >= doc_at["peak_bytes"]


def test_bigger_card_fits_more(write_model):
    wide = write_model(MLP.replace("20", "4096"))  # about 40 KB an example: far below the search limit
    _, t4 = check(wide, "--profile", "t4-16gb", "--batch-size", "8")
    _, h200 = check(wide, "--profile", "h200-sxm-141gb", "--batch-size", "8")
    assert h200["max_batch"] > 5 * t4["max_batch"]


def test_min_max_batch_fails_when_capacity_drops(mlp):
    _, doc = check(mlp, "--profile", "t4-16gb", "--batch-size", "8")
    ok, _ = check(mlp, "--profile", "t4-16gb", "--batch-size", "8", "--min-max-batch", doc["max_batch"])
    short, short_doc = check(mlp, "--profile", "t4-16gb", "--batch-size", "8", "--min-max-batch", doc["max_batch"] + 1)
    assert ok.exit_code == 0
    assert short.exit_code == 1 and short_doc["fits"] and not short_doc["passed"]


def test_margin_tightens_the_budget(mlp):
    _, loose = check(mlp, "--profile", "t4-16gb", "--batch-size", "8", "--margin", "0")
    _, tight = check(mlp, "--profile", "t4-16gb", "--batch-size", "8", "--margin", "0.5")
    assert tight["max_batch"] < loose["max_batch"]


def test_profile_by_path_and_table_output(mlp, tmp_path):
    profile = load("l4-24gb")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**profile, "name": "mine"}))
    result = invoke("check", mlp, "--profile", path, "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "fits" in result.stdout and "headroom" in result.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--profile", "no-such-gpu", "--batch-size", "8"], "unknown profile"),
    (["--profile", "t4-16gb", "--batch-size", "0"], "--batch-size"),
    (["--profile", "t4-16gb", "--batch-size", "8", "--margin", "1"], "--margin"),
    (["--profile", "t4-16gb", "--batch-size", "8", "--min-max-batch", "0"], "--min-max-batch"),
])
def test_bad_check_input_is_exit_two(mlp, args, fragment):
    result = invoke("check", mlp, *args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 1, "name": "x"', "not valid JSON"),
    ('{"schema_version": 99}', "schema_version"),
    ("[1, 2]", "JSON object"),
])
def test_broken_profile_file_is_exit_two(mlp, tmp_path, content, fragment):
    path = tmp_path / "broken.json"
    path.write_text(content)
    result = invoke("check", mlp, "--profile", path, "--batch-size", "8")
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output


def test_recommend_takes_its_budget_from_a_profile(mlp):
    result = invoke("max-batch", mlp, "--device", "cpu", "--profile", "t4-16gb", "--json")
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout)["memory"]
    assert memory["budget_bytes"] == usable_bytes(load("t4-16gb"))
    assert memory["budget_source"].startswith("profile t4-16gb (datasheet)")
    _, doc = check(mlp, "--profile", "t4-16gb", "--batch-size", "8", "--margin", "0")
    assert memory["max_batch"] == doc["max_batch"]


def test_profile_list_show_and_save(isolated_home):
    listed = json.loads(invoke("profile", "list", "--json").stdout)
    names = {p["name"] for p in listed}
    assert {"h100-sxm-80gb", "a100-sxm-40gb", "t4-16gb"} <= names
    shown = json.loads(invoke("profile", "show", "h100-sxm-80gb", "--json").stdout)
    assert shown["total_memory_bytes"] == 85520809984 and shown["source"] == "datasheet"

    saved = invoke("profile", "save", "this-host")
    assert saved.exit_code == 0, saved.output
    path = isolated_home / "profiles" / "this-host.json"
    assert saved.stdout.strip() == str(path)
    mine = json.loads(path.read_text())
    assert mine["source"] == "measured" and mine["device_type"] == "cpu"
    again = invoke("profile", "save", "this-host")
    assert again.exit_code == 2 and "--force" in again.stderr
    assert invoke("profile", "save", "this-host", "--force").exit_code == 0
    listed = json.loads(invoke("profile", "list", "--json").stdout)
    assert any(p["name"] == "this-host" and p["location"] == "user" for p in listed)
