"""Shared fixtures: every test runs isolated from the user's bsadvisor home, and can write model files.

`pytest --test-order reverse` or `--test-order random:SEED` runs the suite in another order, to show that
no test depends on what ran before it.
"""

import random
import textwrap

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """BSADVISOR_HOME in a temp dir: no test reads or writes the real user's profiles."""
    home = tmp_path / "bsadvisor-home"
    monkeypatch.setenv("BSADVISOR_HOME", str(home))
    return home


@pytest.fixture
def write_model(tmp_path):
    """write_model(source, name="model.py") -> path of a model file with that (dedented) source."""
    def write(source: str, name: str = "model.py"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path
    return write


def pytest_addoption(parser):
    parser.addoption("--test-order", default="file", help="file (default), reverse, or random:SEED")


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--test-order")
    if order == "reverse":
        items.reverse()
    elif order.startswith("random:"):
        random.Random(int(order.split(":", 1)[1])).shuffle(items)
    elif order != "file":
        raise pytest.UsageError(f"--test-order: expected file, reverse or random:SEED, got {order!r}")
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
