"""The README's snippets run: every ```python block after a `<!-- test: snippet -->` line, in order, in one
namespace (a later snippet uses what an earlier one defined), from the repository's root. A snippet that
imports an optional extra not installed here (lightning, transformers) is skipped."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"<!-- test: snippet -->\n```python\n(.*?)\n```", re.DOTALL)
SNIPPETS = SNIPPET.findall((REPO / "README.md").read_text())
OPTIONAL = ("lightning", "transformers", "accelerate")


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "readme"}


def test_the_readme_has_its_snippets():
    assert len(SNIPPETS) >= 7


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=[f"snippet{i + 1}" for i in range(len(SNIPPETS))])
def test_snippet_runs(index, namespace, monkeypatch):
    monkeypatch.chdir(REPO)
    source = SNIPPETS[index]
    for module in OPTIONAL:
        if re.search(rf"^(import|from) {module}\b", source, re.MULTILINE):
            pytest.importorskip(module)
    exec(compile(source, f"README.md snippet {index + 1}", "exec"), namespace)
