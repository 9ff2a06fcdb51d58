"""Load a user's model file by the contract in DESIGN.md and check it before any probe runs.

Everything that can go wrong in the user's file becomes a BadInput naming the file and the problem,
so the CLI prints one line and exits 2; nothing here lets a user's traceback through.

Loading leaves the interpreter as it found it: the file's folder is on sys.path, no bytecode is written and
its own modules are in sys.modules only while its code runs (`FileScope`), at import and at every later call.
"""

import contextlib
import importlib.machinery
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from advisor.errors import AdvisorError, BadInput, one_line, raised  # noqa: F401 -- one_line: trace.py's too
from advisor.failures import is_device_error, is_missing_device, is_out_of_memory
from advisor.step import batch_size_of, default_loss, tensors_in
from advisor.watchdog import beat

DEFAULT_BASE_BATCH = 32


@dataclass(frozen=True)
class ModelSpec:
    """The user's file (or the objects given to the Python API), reduced to what bsadvisor needs from it."""

    path: Path | str  # the file, or the name of the objects given: every message starts with it
    build_model: Callable[[], torch.nn.Module]
    make_batch: Callable[[int], Any]
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    base_batch_size: int | None
    accumulation_steps: int = 1  # ACCUMULATION_STEPS: micro-batches whose gradients add up before a step
    make_max_shape_batch: Callable[[int], Any] | None = None  # max_shape_batch(size): batch() at its largest shapes
    notes: list[str] = field(default_factory=list, compare=False)  # what the probes should say about the file
    scope: Callable[[], ContextManager] = contextlib.nullcontext  # entered around every call into the file
    # optimizer(model) where the optimizer is the model's own (a LightningModule's configure_optimizers)
    make_model_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None

    def fail(self, what: str) -> BadInput:
        return BadInput(f"{self.path}: {what}")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def model(self) -> torch.nn.Module:
        model = self._call("model()", self.build_model)
        if not isinstance(model, torch.nn.Module):
            raise self.fail(f"model() returned {type(model).__name__}, expected a torch.nn.Module")
        if not any(p.requires_grad for p in model.parameters()):
            raise self.fail("model() returned a module with no trainable parameters")
        in_eval = sum(not m.training for m in model.modules())
        if in_eval:  # from_pretrained() returns eval mode: dropout off, BatchNorm frozen, not what trains
            self.note(f"model() returned {in_eval} of {len(list(model.modules()))} modules in eval mode "
                      "(as from_pretrained does): every probe runs model.train(), as training does")
        return model.train()

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        if self.make_model_optimizer is not None:
            opt = self._call("optimizer(model)", self.make_model_optimizer, model)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            opt = self._call("optimizer(params)", self.make_optimizer, params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise self.fail(f"optimizer(params) returned {type(opt).__name__}, expected a torch.optim.Optimizer")
        return opt

    def batch(self, size: int) -> Any:
        return self._checked_batch(f"batch({size})", self.make_batch, size)

    def _checked_batch(self, what: str, make: Callable[[int], Any], size: int) -> Any:
        batch = self._call(what, make, size)
        tensors = tensors_in(batch)
        if not tensors:
            raise self.fail(f"{what} returned {type(batch).__name__} with no tensors; "
                            "expected a tensor, a tuple/list or a dict of tensors")
        for t in tensors:
            odd = _unusual_tensor(t)
            if odd is not None:
                raise self.fail(f"{what} returned {odd}; expected dense tensors on the CPU")
        got = batch_size_of(batch)
        if got != size or any(t.dim() == 0 or t.shape[0] != size for t in tensors):
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise self.fail(f"{what} must return {size} examples along the first dimension, got shapes {shapes}")
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors):
            raise self.fail(f"{what} returned tensors with NaN or infinite values")
        return batch

    def max_shape_batch(self, size: int) -> Any:
        """The file's max_shape_batch(size), checked as batch() is; None when the file defines none."""
        if self.make_max_shape_batch is None:
            return None
        return self._checked_batch(f"max_shape_batch({size})", self.make_max_shape_batch, size)

    def _call(self, what: str, fn: Callable, *args):
        beat(what)
        try:
            with self.scope():
                return fn(*args)
        except AdvisorError:
            raise  # already names the file and the problem (the checked loss, a nested spec call)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the user's code: any failure is bad input, reported in one line
            if what.startswith(("batch(", "max_shape_batch(")) and is_out_of_memory(exc):
                raise  # a batch that does not fit: the probes recover (try_step), the contract check says so
            hint = (" (the file builds on the CPU: bsadvisor moves the model and batches to the device it "
                    "measures)") if is_missing_device(exc) else ""
            raise self.fail(f"{what} {raised(exc)}{hint}") from None


class CheckedLoss:
    """The user's loss (or the default) as every probe calls it: a failure, or a value that is not a
    differentiable scalar tensor, at any batch size becomes a one-line BadInput naming the file.

    Out-of-memory errors pass through untouched (the probes recover from them), and so do device errors
    (the probes report them, exit 4) and any error raised while a FakeTensorMode traces the step: the
    memory tracer reports those itself.
    Finiteness is left to the caller, which has the value on the host when it needs it."""

    def __init__(self, path: Path | str, fn: Callable[[torch.nn.Module, Any], torch.Tensor], default: bool,
                 autocast: torch.dtype | None = None, scope: Callable[[], ContextManager] = contextlib.nullcontext):
        self.path, self.fn, self.autocast, self.scope = path, fn, autocast, scope
        self.what = "the default loss" if default else "loss(model, batch)"

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        beat(f"{self.what} at batch {batch_size_of(batch)}")
        try:
            with self._mixed_precision(model), self.scope():
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


    def _mixed_precision(self, model: torch.nn.Module):
        """The file's AUTOCAST: the forward and the loss under torch.autocast on the device the model is on,
        as a training loop's `with torch.autocast(...)` puts them (the backward pass runs outside it)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        first = next(model.parameters(), None)
        device_type = first.device.type if first is not None else "cpu"
        return torch.autocast(device_type=device_type, dtype=self.autocast)


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
                   "half": torch.float16}
MAX_ACCUMULATION_STEPS = 10**6


def autocast_dtype(path: Path | str, value: Any) -> torch.dtype | None:
    """AUTOCAST in a model file: torch.bfloat16 / torch.float16 (or their names); None or False for none."""
    if value is None or value is False:
        return None
    if isinstance(value, torch.dtype) and value in (torch.bfloat16, torch.float16):
        return value
    if isinstance(value, str) and value.strip().lower().removeprefix("torch.") in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[value.strip().lower().removeprefix("torch.")]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise BadInput(f"{path}: AUTOCAST must be torch.bfloat16 or torch.float16 (the dtype torch.autocast "
                   f"computes in), got {shown}")


def _accumulation_steps(path: Path, value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ACCUMULATION_STEPS:
        raise BadInput(f"{path}: ACCUMULATION_STEPS must be a positive int of at most {MAX_ACCUMULATION_STEPS}, "
                       f"got {value!r}"[:200])
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
    scope = FileScope(path)
    module = _import_file(path, scope)
    found = {name: getattr(module, name, None) for name in ("model", "batch", "loss", "optimizer", "max_shape_batch")}
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
        loss=CheckedLoss(path, found["loss"] or default_loss, default=found["loss"] is None,
                         autocast=autocast_dtype(path, getattr(module, "AUTOCAST", None)), scope=scope),
        make_optimizer=found["optimizer"] or (lambda params: torch.optim.AdamW(params, lr=1e-3)),
        base_batch_size=base,
        accumulation_steps=_accumulation_steps(path, getattr(module, "ACCUMULATION_STEPS", None)),
        make_max_shape_batch=found["max_shape_batch"],
        scope=scope,
    )


def _import_file(path: Path, scope: "FileScope"):
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
    loader = importlib.machinery.SourceFileLoader(scope.name, str(path))
    module_spec = importlib.util.spec_from_file_location(scope.name, path, loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    try:
        with scope():
            sys.modules[scope.name] = module  # the module's own classes (dataclasses) look themselves up there
            module_spec.loader.exec_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # any exception, MemoryError and BaseException subclasses too
        scope.forget()
        hint = ("; guard the training script's code with `if __name__ == \"__main__\":`"
                if isinstance(exc, SystemExit) else "")
        raise BadInput(f"{path}: importing it {raised(exc)}{hint}") from None
    return module


class FileScope:
    """The interpreter as the model file's code sees it, only while that code runs: its folder first on
    sys.path (so it imports its own helpers, as `python model.py` would, also lazily from model() or batch()),
    no bytecode written (no __pycache__ beside the user's files), and its own modules (the file, the helpers
    from its folder) in sys.modules, where a module of the caller's by the name of one in the folder is set
    aside. Outside, sys.path, sys.dont_write_bytecode and sys.modules are as the caller left them: the
    caller's module of that name is neither shadowed nor replaced."""

    def __init__(self, path: Path):
        self.name = f"bsadvisor_user_model_{abs(hash(path.resolve()))}"
        folder = path.resolve().parent
        self.folder = str(folder)
        try:  # what `import x` finds in the folder first, as `python model.py` would
            self.local_names = {p.stem for p in folder.glob("*.py")} | {
                p.parent.name for p in folder.glob("*/__init__.py")}
        except OSError:
            self.local_names = set()
        self.own: dict[str, Any] = {}  # the file's modules, kept between calls
        self.depth = 0  # calls nest (the loss calls model code): only the outermost enters and leaves

    @contextlib.contextmanager
    def __call__(self):
        if self.depth:
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        saved_path, saved_flag = list(sys.path), sys.dont_write_bytecode
        replaced = {name: sys.modules.pop(name) for name in self.local_names | set(self.own)
                    if name in sys.modules and _set_aside(sys.modules[name], self.folder)}
        known = set(sys.modules)
        sys.path.insert(0, self.folder)
        sys.dont_write_bytecode = True
        sys.modules.update(self.own)
        self.depth = 1
        try:
            yield
        finally:
            self.depth = 0
            self._keep_own(known)
            for name in self.own:
                sys.modules.pop(name, None)
            sys.modules.update(replaced)
            sys.path[:] = saved_path
            sys.dont_write_bytecode = saved_flag

    def _keep_own(self, known: set[str]) -> None:
        """The modules the file's code imported from its folder (and the file itself): its own."""
        if len(sys.modules) == len(known) and self.name in self.own:
            return
        for name, module in list(sys.modules.items()):
            if name in self.own or name == self.name:
                self.own[name] = module
            elif name not in known and _inside(getattr(module, "__file__", None), self.folder):
                self.own[name] = module

    def forget(self) -> None:
        self.own.clear()


def _set_aside(module: Any, folder: str) -> bool:
    """Whether the caller's `module`, named like one in the model file's folder, makes way for it while the
    file's code runs: a module of the caller's own program does; one from outside it (the standard library,
    an installed package such as torch, bsadvisor itself) stays, whatever the folder holds."""
    file = getattr(module, "__file__", None)
    if not file or _inside(file, folder) or module.__name__ in sys.stdlib_module_names:
        return False
    return not any(part in ("site-packages", "dist-packages") for part in Path(file).parts) and \
        module.__name__.split(".")[0] not in ("advisor", "bsadvisor", "torch")


def _inside(file: str | None, folder: str) -> bool:
    if not file:
        return False
    try:
        return Path(file).resolve().parent.is_relative_to(folder)
    except (OSError, ValueError):
        return False


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
