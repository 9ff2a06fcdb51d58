"""The README's snippets run: every ```python block after a `<!-- test: snippet -->` line, in order, in one
namespace (a later snippet uses what an earlier one defined), from the repository's root. A snippet that
imports an optional extra not installed here (lightning, transformers) is skipped.

Each snippet runs once, in the README's order, whatever order the tests run in (`--test-order`): a test
runs the snippets up to its own that have not run yet, then reports its own snippet's outcome."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"<!-- test: snippet -->\n```python\n(.*?)\n```", re.DOTALL)
SNIPPETS = SNIPPET.findall((REPO / "README.md").read_text())
OPTIONAL = ("lightning", "transformers", "accelerate")


class InOrder:
    """The snippets run in order in one namespace; `outcome(i)`: None (it ran), the exception it raised, or
    the reason it was skipped."""

    def __init__(self):
        self.namespace = {"__name__": "readme"}
        self.outcomes: list = []

    def outcome(self, index: int):
        while len(self.outcomes) <= index:
            self.outcomes.append(self._run(len(self.outcomes)))
        return self.outcomes[index]

    def _run(self, index: int):
        source = SNIPPETS[index]
        for module in OPTIONAL:
            imported = re.search(rf"^(import|from) {module}\b", source, re.MULTILINE)
            if imported and importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        try:
            exec(compile(source, f"README.md snippet {index + 1}", "exec"), self.namespace)
        except Exception as exc:  # reported by this snippet's test (and the later ones fail on their own)
            return exc
        return None


@pytest.fixture(scope="module")
def snippets():
    return InOrder()


def test_the_readme_has_its_snippets():
    assert len(SNIPPETS) >= 7


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=[f"snippet{i + 1}" for i in range(len(SNIPPETS))])
def test_snippet_runs(index, snippets, monkeypatch):
    monkeypatch.chdir(REPO)
    outcome = snippets.outcome(index)
    if isinstance(outcome, str):
        pytest.skip(outcome)
    if outcome is not None:
        raise outcome
