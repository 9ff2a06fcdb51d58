"""bsadvisor: which batch size, and which learning rate, measured rather than guessed.

The Python API (advisor/api.py), imported on first use so that `import advisor` stays light:

    import advisor
    report = advisor.recommend(make_model, draw_batch, device="cpu")
    report.batch_size, report.learning_rate, report.to_dict()

`advisor.load(path)` reads a model file; `max_batch`, `noise`, `throughput` and `check` run one probe each.
Failures are exceptions of advisor.errors: BadInput, DeviceUnavailable, ProbeFailed (StepTimeout for a call
past the step timeout).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load": "advisor.api", "recommend": "advisor.api", "max_batch": "advisor.api", "noise": "advisor.api",
    "throughput": "advisor.api", "check": "advisor.api", "run": "advisor.api", "run_check": "advisor.api",
    "Report": "advisor.results", "CapacityCheck": "advisor.capacity", "Settings": "advisor.settings",
    "make_settings": "advisor.settings", "ModelSpec": "advisor.spec", "Backend": "advisor.devices",
    "AdvisorError": "advisor.errors", "BadInput": "advisor.errors", "DeviceUnavailable": "advisor.errors",
    "ProbeFailed": "advisor.errors", "StepTimeout": "advisor.watchdog",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'advisor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
