"""Shared fixtures: every test runs isolated from the user's bsadvisor home, and can write model files."""

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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
