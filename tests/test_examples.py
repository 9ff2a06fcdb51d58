"""The bundled examples honour the contract, and the main job runs end to end on the GPT."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advisor.cli import app
from advisor.spec import check_contract, load_spec
from tests.test_cli import assert_design_fields

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_honours_the_contract(path):
    spec = load_spec(path)
    check_contract(spec)
    assert spec.base_batch_size


def test_recommend_on_the_gpt_example_end_to_end():
    gpt = next(p for p in EXAMPLES if "gpt" in p.stem)
    result = CliRunner().invoke(app, ["recommend", str(gpt), "--device", "cpu", "--noise-budget", "80steps", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert_design_fields(doc)
    assert doc["memory"]["budget_source"].startswith("host available memory")
    assert doc["noise"]["preconditioned"]  # AdamW, measured after warm-up
