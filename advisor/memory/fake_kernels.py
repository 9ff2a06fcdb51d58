"""Fake (meta) kernels that hold less than the real kernel, and what the real one holds.

A FakeTensorMode trace is exact only where each fake kernel returns outputs the size of the real
kernel's. Where one does not, the trace under-counts what the step keeps alive, and the largest batch
comes out too large: the worst error a capacity tool can make. Each entry here gives the real sizes for
one such kernel, and the operator-family tests (tests/test_fidelity.py) hold every family to real CPU
steps, byte for byte, so that a new gap shows up there.

- `aten.mkldnn_rnn_layer` (the CPU LSTM, one layer and direction per call): the meta kernel returns a
  0-byte workspace; oneDNN's holds the gates, the states and their gradients for the whole sequence
  (~24 KB an example for a 12-step, 32-unit layer), saved for the backward pass. Its size follows
  oneDNN's `rnn_utils::set_workspace_sizes` and `set_offsets` (src/cpu/rnn/rnn_utils.{hpp,cpp}): each
  region page-aligned (4096 bytes), leading dimensions padded to 64 bytes and off multiples of 256
  elements (`get_good_ld`).
- `aten.mkldnn_rnn_layer_backward`: the meta kernel returns one tensor as both bias gradients; the real
  kernel returns two.
- `aten._embedding_bag` (mean and max modes): the CPU kernel's offset2bag holds one index more.

And one thing a fake tensor cannot give: its value (`.item()`), which some optimizers read; see
`stands_in_for_value`.
"""

from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor

PAGE = 4096
ACCUMULATOR_BYTES = 4  # oneDNN's gemm_acc_t for f32, bf16 and f16 RNNs is float
MKLDNN_LSTM = 2        # ideep::rnn_kind::LSTM, the `mode` torch passes to mkldnn_rnn_layer


def _good_ld(dim: int, itemsize: int) -> int:
    """oneDNN's get_good_ld: rounded up to 64 bytes, and off multiples of 256 (4K aliasing)."""
    step = 64 // itemsize
    ld = -(-dim // step) * step
    return ld + step if ld % 256 == 0 else ld


def _page_aligned_total(sizes: list[int]) -> int:
    offset = 0
    for size in sizes:
        offset = -(-offset // PAGE) * PAGE + size
    return -(-offset // PAGE) * PAGE  # the last region (the grid of LBR GRUs, empty here) starts on a page too


def mkldnn_lstm_workspace_bytes(steps: int, batch: int, inputs: int, hidden: int, itemsize: int,
                                cell_itemsize: int) -> int:
    """The workspace a training-mode oneDNN LSTM layer (one direction) keeps for the backward pass."""
    states = 2 * (steps + 1) * batch  # (layers + 1) x (iterations + 1) x batch, one layer per call
    widest = max(inputs, hidden)
    return _page_aligned_total([
        steps * batch * _good_ld(4 * hidden, itemsize) * itemsize,    # gates
        steps * batch * _good_ld(hidden, itemsize) * itemsize,        # h_t
        states * _good_ld(widest, itemsize) * itemsize,               # layer and iteration states
        states * hidden * cell_itemsize,                              # cell states
        states * _good_ld(widest, ACCUMULATOR_BYTES) * ACCUMULATOR_BYTES,  # their gradients: layer,
        states * _good_ld(widest, ACCUMULATOR_BYTES) * ACCUMULATOR_BYTES,  # iteration,
        states * hidden * ACCUMULATOR_BYTES,                               # cell
    ])


def _mkldnn_rnn_layer(bound: dict[str, Any], out: Any) -> Any:
    output, hy, cy, workspace = out
    if not bound["train"] or bound["mode"] != MKLDNN_LSTM or workspace.numel() != 0:
        return out
    x, cx = bound["input"], bound["cx_"]
    steps, batch = x.shape[0], x.shape[1]  # time-major always: torch transposes a batch_first input before the call
    size = mkldnn_lstm_workspace_bytes(steps, batch, x.shape[-1], bound["hidden_size"], x.element_size(),
                                       cx.element_size() if cx is not None else x.element_size())
    return output, hy, cy, workspace.new_empty((size,))


def _mkldnn_rnn_layer_backward(bound: dict[str, Any], out: Any) -> Any:
    """The meta kernel returns one bias gradient twice; the real one returns two tensors."""
    grads = list(out)
    if grads[3] is grads[4] or grads[3].untyped_storage() is grads[4].untyped_storage():
        grads[4] = grads[3].new_empty(grads[3].shape)
    return tuple(grads)


def _embedding_bag(bound: dict[str, Any], out: Any) -> Any:
    """The CPU kernel sizes offset2bag for one index more than it keeps (it resizes it down, which keeps the
    storage); the meta kernel sizes it exactly."""
    result, offset2bag, bag_size, max_indices = out
    if offset2bag.numel() == 0:
        return out
    return result, offset2bag.new_empty((offset2bag.numel() + 1,))[:offset2bag.numel()], bag_size, max_indices


FIXES: dict[Any, Callable[[dict[str, Any], Any], Any]] = {
    torch.ops.aten.mkldnn_rnn_layer.default: _mkldnn_rnn_layer,
    torch.ops.aten.mkldnn_rnn_layer_backward.default: _mkldnn_rnn_layer_backward,
    torch.ops.aten._embedding_bag.default: _embedding_bag,
    torch.ops.aten._embedding_bag_forward_only.default: _embedding_bag,
}

STAND_IN_VALUE = 1  # what a fake trace reads for a tensor's value: 1 (not 0, which an optimizer may divide by)


def stands_in_for_value(func, args: tuple) -> bool:
    """`tensor.item()` on a fake tensor (ASGD's and Adafactor's step counts): a fake tensor has no value,
    so the trace reads STAND_IN_VALUE instead; memory rarely depends on it, and where a real step is
    affordable the fidelity check holds the trace to it."""
    return func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor) \
        and args[0].constant is None


def stand_in(t: torch.Tensor):
    if t.dtype == torch.bool:
        return True
    return float(STAND_IN_VALUE) if t.is_floating_point() else STAND_IN_VALUE


def as_real(func, args: tuple, kwargs: dict, out: Any) -> Any:
    """`out` of `func` with every fake output the size the real kernel's would be."""
    fix = FIXES.get(func)
    if fix is None or not any(isinstance(t, FakeTensor) for t in (out if isinstance(out, tuple) else (out,))):
        return out
    names = [a.name for a in func._schema.arguments]
    return fix({**dict(zip(names, args)), **kwargs}, out)
