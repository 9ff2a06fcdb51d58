"""The Python standard library's source bytes, as examples/gpt_stdlib.py reads them (90/10 split), for the
benchmark model files beside this one: random windows of `context + 1` bytes."""
import importlib.util
from pathlib import Path

import torch

_GPT = None


def _gpt():
    global _GPT
    if _GPT is None:
        path = Path(__file__).resolve().parents[2] / "examples" / "gpt_stdlib.py"
        spec = importlib.util.spec_from_file_location("_benchmark_models_gpt_stdlib_data", path)
        _GPT = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_GPT)
    return _GPT


def windows(split: int, size: int, context: int) -> torch.Tensor:
    """`size` random windows of `context + 1` bytes (int64) from the train (0) or validation (1) split."""
    data = _gpt()._data()[split]
    ix = torch.randint(len(data) - context, (size, 1))
    return data[ix + torch.arange(context + 1)].long()
