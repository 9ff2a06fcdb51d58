"""Load a user's model file by the contract in DESIGN.md and check it before any probe runs.

Everything that can go wrong in the user's file becomes a BadInput naming the file and the problem,
so the CLI prints one line and exits 2; nothing here lets a user's traceback through.
"""

import importlib.machinery
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from advisor.errors import AdvisorError, BadInput, one_line, raised  # noqa: F401 -- one_line: trace.py's too
from advisor.memory.oom import is_device_error, is_out_of_memory
from advisor.step import batch_size_of, default_loss, tensors_in
from advisor.watchdog import beat

DEFAULT_BASE_BATCH = 32


@dataclass(frozen=True)
class ModelSpec:
    """The user's file, reduced to the five things bsadvisor needs from it."""

    path: Path
    build_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[int], Any]
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    base_batch_size: int | None

    def fail(self, what: str) -> BadInput:
        return BadInput(f"{self.path}: {what}")

    def model(self) -> torch.nn.Module:
        model = self._call("model()", self.build_model)
        if not isinstance(model, torch.nn.Module):
            raise self.fail(f"model() returned {type(model).__name__}, expected a torch.nn.Module")
        if not any(p.requires_grad for p in model.parameters()):
            raise self.fail("model() returned a module with no trainable parameters")
        return model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self._call("optimizer(params)", self.make_optimizer, params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise self.fail(f"optimizer(params) returned {type(opt).__name__}, expected a torch.optim.Optimizer")
        return opt

    def batch(self, size: int) -> Any:
        batch = self._call(f"batch({size})", self.make_batch, size)
        tensors = tensors_in(batch)
        if not tensors:
            raise self.fail(f"batch({size}) returned {type(batch).__name__} with no tensors; "
                            "expected a tensor, a tuple/list or a dict of tensors")
        for t in tensors:
            odd = _unusual_tensor(t)
            if odd is not None:
                raise self.fail(f"batch({size}) returned {odd}; expected dense tensors on the CPU")
        got = batch_size_of(batch)
        if got != size or any(t.dim() == 0 or t.shape[0] != size for t in tensors):
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise self.fail(f"batch({size}) must return {size} examples along the first dimension, got shapes {shapes}")
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
            raise self.fail(f"batch({size}) returned tensors with NaN or infinite values")
        return batch

    def _call(self, what: str, fn: Callable, *args):
        beat(what)
        try:
            return fn(*args)
        except AdvisorError:
            raise  # already names the file and the problem (the checked loss, a nested spec call)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the user's code: any failure is bad input, reported in one line
            if what.startswith("batch(") and is_out_of_memory(exc):
                raise  # a batch that does not fit: the probes recover (try_step), the contract check says so
            raise self.fail(f"{what} {raised(exc)}") from None


class CheckedLoss:
    """The user's loss (or the default) as every probe calls it: a failure, or a value that is not a
    differentiable scalar tensor, at any batch size becomes a one-line BadInput naming the file.

    Out-of-memory errors pass through untouched (the probes recover from them), and so do device errors
    (the probes report them, exit 4) and any error raised while a FakeTensorMode traces the step: the
    memory tracer reports those itself.
    Finiteness is left to the caller, which has the value on the host when it needs it."""

    def __init__(self, path: Path, fn: Callable[[torch.nn.Module, Any], torch.Tensor], default: bool):
        self.path, self.fn = path, fn
        self.what = "the default loss" if default else "loss(model, batch)"

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        beat(f"{self.what} at batch {batch_size_of(batch)}")
        try:
            value = self.fn(model, batch)
        except (KeyboardInterrupt, AdvisorError):
            raise
        except BaseException as exc:
            if is_out_of_memory(exc) or is_device_error(exc) or (isinstance(exc, Exception) and _tracing_fake()):
                raise
            if isinstance(exc, SystemExit):
                raise BadInput(f"{self.path}: {self.what} {raised(exc)}") from None
            raise BadInput(f"{self.path}: {self.what} raised {type(exc).__name__} at batch "
                           f"{batch_size_of(batch)}: {one_line(exc)}") from None
        odd = _unusual_tensor(value) if isinstance(value, torch.Tensor) else None
        if odd is None and isinstance(value, torch.Tensor) and (value.is_complex() or not value.is_floating_point()):
            odd = f"a {value.dtype} tensor"
        if odd is not None:
            raise BadInput(f"{self.path}: {self.what} returned {odd} at batch {batch_size_of(batch)}, "
                           "expected a real floating-point scalar tensor (the mean loss over the batch)")
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise BadInput(f"{self.path}: {self.what} returned {shape} at batch {batch_size_of(batch)}, "
                           "expected a scalar tensor (the mean loss over the batch)")
        if torch.is_grad_enabled() and not value.requires_grad:
            raise BadInput(f"{self.path}: {self.what} is not differentiable: its value does not depend on "
                           "the model's parameters (no grad_fn; was it detached or built from .item()?)")
        return value


def _unusual_tensor(t: torch.Tensor) -> str | None:
    """What makes `t` something no probe can read (None for an ordinary dense tensor): a meta tensor has no
    values, a sparse or nested one no plain shape and strides."""
    if t.is_nested:
        return "a nested tensor"
    if t.layout != torch.strided:
        return f"a sparse tensor ({str(t.layout).replace('torch.', '')})"
    if t.is_meta:
        return "a meta tensor (no data)"
    return None


def _tracing_fake() -> bool:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any(isinstance(mode, FakeTensorMode) for mode in _get_current_dispatch_mode_stack())


def load_spec(path: str | Path) -> ModelSpec:
    """Import the model file (never writing bytecode next to it) and read the contract's names."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path}: is a directory; expected a model file (a .py file defining model() and batch(size))")
    if not path.is_file():
        raise BadInput(f"{path}: no such model file")
    module = _import_file(path)
    found = {name: getattr(module, name, None) for name in ("model", "batch", "loss", "optimizer")}
    for name in ("model", "batch"):
        if found[name] is None:
            raise BadInput(f"{path}: defines no `{name}`; a model file needs model() and batch(size)")
    for name, fn in found.items():
        if fn is not None and not callable(fn):
            raise BadInput(f"{path}: `{name}` is {type(fn).__name__}, expected a function")
    base = getattr(module, "BASE_BATCH_SIZE", None)
    if base is not None and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
        raise BadInput(f"{path}: BASE_BATCH_SIZE must be a positive int, got {base!r}")
    return ModelSpec(
        path=path,
        build_model=found["model"],
        make_batch=found["batch"],
        loss=CheckedLoss(path, found["loss"] or default_loss, default=found["loss"] is None),
        make_optimizer=found["optimizer"] or (lambda params: torch.optim.AdamW(params, lr=1e-3)),
        base_batch_size=base,
    )


def _import_file(path: Path):
    name = f"bsadvisor_user_model_{abs(hash(path.resolve()))}"
    try:
        source = path.read_bytes()
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        raise BadInput(f"{path}: not valid Python: {one_line(exc.msg)}{where}") from None
    except ValueError as exc:  # null bytes, on Pythons before 3.11.4
        raise BadInput(f"{path}: not valid Python: {one_line(exc)}") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the model file: {exc.strerror or one_line(exc)}") from None
    except RecursionError:
        raise BadInput(f"{path}: not valid Python: too deeply nested to compile") from None
    # Any file name works (model.txt, a script without a suffix): the source loader does not care.
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    # Nothing is written next to the user's files: no __pycache__ for it or its siblings.
    sys.dont_write_bytecode = True
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its own helpers, as `python model.py` would
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as exc:  # any exception, MemoryError and BaseException subclasses too
        sys.modules.pop(name, None)
        hint = ("; guard the training script's code with `if __name__ == \"__main__\":`"
                if isinstance(exc, SystemExit) else "")
        raise BadInput(f"{path}: importing it {raised(exc)}{hint}") from None
    return module


def check_contract(spec: ModelSpec) -> int:
    """Real training steps at tiny batches on the CPU: every contract failure surfaces here, named.
    Returns the smallest batch that trains: 1, or 2 where batch 1 cannot (BatchNorm in training mode)."""
    try:
        _contract_step(spec, 2)
    except BadInput:
        raise
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise spec.fail(f"nothing fits: the contract step at batch 2 ran out of memory "
                        f"({type(exc).__name__}: {one_line(exc, 120)})") from None
    try:
        _contract_step(spec, 1)
    except BadInput:
        return 2
    return 1


def _contract_step(spec: ModelSpec, size: int) -> None:
    model = spec.model()
    opt = spec.optimizer(model)
    batch = spec.batch(size)
    value = checked_loss(spec, model, batch)
    try:
        value.backward()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise spec.fail(f"loss is not differentiable: {type(exc).__name__}: {one_line(exc)}") from None
    trained = [p for group in opt.param_groups for p in group["params"]]
    if not any(_nonzero(p.grad) for p in trained):
        raise spec.fail(f"the loss at batch {size} gives no gradient to any parameter the optimizer trains: "
                        "it does not depend on the model (a leaf tensor, or a value cut off from model's output?)")
    spec._call("optimizer.step()", opt.step)


def _nonzero(grad: torch.Tensor | None) -> bool:
    if grad is None:
        return False
    if grad.layout != torch.strided:  # a sparse gradient (nn.Embedding(sparse=True))
        grad = grad.coalesce().values()
    return bool((grad != 0).any())


def checked_loss(spec: ModelSpec, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The user's loss, which must also be finite here (spec.loss, a CheckedLoss, has already made sure
    it is a differentiable scalar)."""
    value = spec.loss(model, batch)
    if not math.isfinite(value.item()):  # CheckedLoss made sure it is a real scalar
        raise spec.fail(f"loss(model, batch) is not finite ({value.item()})")
    return value.reshape(())
