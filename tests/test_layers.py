"""Imports point down: every module of advisor/ imports only from layers below its own (or its own package),
so that a change's place follows from the folders, and the core never reaches up into the command line."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "advisor"

# Lowest first; a unit is a top-level module or a subpackage of advisor/ (README: Development).
LAYERS = [
    {"errors", "__version__"},
    {"units", "failures", "watchdog"},
    {"noise_scale", "advice", "preconditioners", "schedule"},
    {"step"},
    {"spec"},
    {"inputs"},
    {"hardware"},
    {"memory"},
    {"devices", "distributed"},
    {"probes"},
    {"results"},
    {"tables"},
    {"settings"},
    {"pipeline", "capacity"},
    {"api"},
    {"isolate"},
    {"cli", "integrations"},
    {"__main__", "__init__"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def imported(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "advisor":
            if node.module == "advisor":
                yield from ((node.lineno, f"advisor.{a.name}") for a in node.names)
            else:
                yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "advisor")


def wrong_way_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for line, target in imported(path):
            here, there = unit(source), unit(target)
            if there == here or target.startswith("advisor.shipped_profiles"):
                continue
            if LAYER[there] >= LAYER[here]:
                found.append(f"{source}:{line} imports {target}")
    return found


def test_every_unit_has_a_layer():
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"shipped_profiles"}
    assert units <= set(LAYER), units - set(LAYER)


def test_imports_point_down():
    assert wrong_way_imports() == []


@pytest.mark.parametrize("module", ["watchdog", "failures", "units"])
def test_the_base_does_not_reach_up_through_sys_modules(module):
    """No look-up of a module above by name (the watchdog once found advisor.distributed so)."""
    assert "sys.modules" not in (PACKAGE / f"{module}.py").read_text()
