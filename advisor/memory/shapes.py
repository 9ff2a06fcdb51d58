"""The batch shapes a trace stands for, when `batch()`'s shapes past the first dimension vary.

A trace runs at any batch size with the shapes of one example batch. A `batch()` that pads each batch to
its own longest sequence (dynamic padding) or draws a sequence length returns other shapes at every call:
traced at `batch(1)`'s, the peak is that of a short batch and the largest batch comes out several times
too large. So the shapes are drawn at growing sizes (the longest of 64 examples is longer than that of
one) and the trace takes, for each tensor, the largest of every dimension seen; the model file may
instead declare `max_shape_batch(size)`, a batch at the largest shapes its data produces.
"""

from dataclasses import dataclass
from typing import Any

import torch

from advisor.spec import ModelSpec
from advisor.step import map_tensors, tensors_in

DRAW_SIZES = (1, 2, 8, 32, 128)  # times the smallest batch
DRAW_BYTES = 64 * 2**20  # no draw past a batch of this many bytes: the shapes, not the data, are wanted


@dataclass(frozen=True)
class BatchShapes:
    example: Any          # a batch of the smallest size; its shapes past the first dimension are traced
    varies: bool          # shapes past the first dimension differ between draws (or the file declared a maximum)
    source: str           # where the shapes come from, said in notes and methods


def batch_shapes(spec: ModelSpec, smallest: int) -> BatchShapes:
    """batch(smallest), unless the file declares max_shape_batch() or batch()'s shapes vary between draws."""
    declared = spec.max_shape_batch(smallest)
    if declared is not None:
        return BatchShapes(declared, True, "max_shape_batch(), as the model file declares")
    first = spec.batch(smallest)
    seen, drawn = [_shapes(first)], first
    for previous, times in zip(DRAW_SIZES, DRAW_SIZES[1:]):
        if sum(t.nbytes for t in tensors_in(drawn)) * times / previous > DRAW_BYTES:
            break
        drawn = spec.batch(times * smallest)
        if _shapes(drawn) is None or len(_shapes(drawn)) != len(seen[0]):
            return BatchShapes(first, False, "batch()")  # another structure: the step decides what that means
        seen.append(_shapes(drawn))
    if all(s == seen[0] for s in seen):
        return BatchShapes(first, False, "batch()")
    widest = [tuple(max(dims) for dims in zip(*column)) for column in zip(*seen)]
    shapes = ", ".join(f"({', '.join(['B', *map(str, s)])})" for s in widest)
    spec.note(f"batch() returns shapes that change between calls past the first dimension (dynamic padding or a "
              f"drawn length): memory is traced at the largest seen over {len(seen)} draws of up to "
              f"{DRAW_SIZES[len(seen) - 1] * smallest} examples, {shapes}; define max_shape_batch(size) in the "
              "model file to trace the largest your data can produce")
    return BatchShapes(_widened(first, iter(widest)), True, f"the largest shapes of {len(seen)} draws of batch()")


def _shapes(batch: Any) -> list[tuple[int, ...]] | None:
    tensors = tensors_in(batch)
    return [tuple(t.shape[1:]) for t in tensors] if tensors else None


def _widened(batch: Any, widest) -> Any:
    """`batch` with each tensor grown (zeros) to the widest shape seen past the first dimension."""
    def widen(t: torch.Tensor) -> torch.Tensor:
        return torch.zeros((t.shape[0], *next(widest)), dtype=t.dtype)
    return map_tensors(widen, batch)
