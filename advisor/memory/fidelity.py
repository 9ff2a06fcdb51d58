"""The fake trace held to real steps wherever a real step at a small batch is affordable here.

The operator-family tests (tests/test_fidelity.py) show fake == real, byte for byte, for every family they
cover; a user's model may use an operator none of them saw. So where a real CPU step at a small batch costs
little (its traced peak at most REAL_STEP_LIMIT, and a quarter of the host's available memory), the fake
trace is compared with real steps' tracked peak (LiveStorageTracker on real tensors) at two batch sizes, the
batch held alike on both sides (as the trace lays it out; where batch()'s shapes vary, the same drawn batch,
compact on both), so that only the step differs. Where they
agree to the byte, the trace stands. Where the real step holds more, every traced peak is corrected by the
gap, fitted as a line in the batch size through the two points (never below the larger gap seen, so a gap
that does not grow is not fitted away), and a note says so; a CPU device then confirms the boundary with
real steps (advisor/memory/max_batch.py). Where the fake trace holds more, it is kept: an overestimate
cannot make a batch that does not train look as if it fits.
"""

from dataclasses import dataclass, field
from typing import Callable

from advisor.errors import BadInput, ProbeFailed
from advisor.hardware.host import host_available_bytes
from advisor.memory.trace import StepTracer
from advisor.spec import ModelSpec, one_line
from advisor.units import format_bytes

REAL_STEP_LIMIT = 2**30  # a real check step on the host holds at most this (and a quarter of what is available)


@dataclass(frozen=True)
class Fidelity:
    points: dict[int, tuple[int, int]] = field(default_factory=dict)  # batch -> (fake peak, real peak)
    skipped: str | None = None  # why no comparison ran
    contract_ran: bool = False  # the real contract check ran (finite loss, gradients), compared or not

    @property
    def checked(self) -> bool:
        return bool(self.points)

    @property
    def exact(self) -> bool:
        return all(fake == real for fake, real in self.points.values())

    def gap(self, batch: int) -> int:
        """Bytes the real step holds beyond the fake trace at `batch` (0 where the trace is exact or over)."""
        gaps = sorted((b, real - fake) for b, (fake, real) in self.points.items())
        if not gaps or all(g <= 0 for _, g in gaps):
            return 0
        (b1, g1), (b2, g2) = gaps[0], gaps[-1]
        slope = max(0.0, (g2 - g1) / (b2 - b1)) if b2 > b1 else 0.0
        return max(0, g2, round(g2 + slope * (batch - b2)))

    def describe(self) -> str:
        return "; ".join(f"batch {b}: fake {fake}, real {real} bytes" for b, (fake, real) in sorted(self.points.items()))


def real_step_limit() -> int:
    return min(REAL_STEP_LIMIT, host_available_bytes() // 4)


def hold_to_real_steps(spec: ModelSpec, seed: int, smallest: int, build_fake: bool,
                       contract: Callable[[], int] | None = None, fake: StepTracer | None = None,
                       configure: Callable | None = None, prepare: Callable | None = None,
                       built_bytes: int = 0, sharded: bool = False) -> tuple[Fidelity, int]:
    """The fake trace (CPU kernels, compact batches) against real CPU steps at the smallest batch and twice
    it, when a real step at twice it is affordable here; `contract()`, the real contract check, runs first
    and says the smallest batch that trains. `fake`: a tracer already built that runs the CPU's kernels (else
    one is built); `prepare` and `configure`: what was applied to its model (sharding: real tensors step
    through a fake process group too) and optimizer, applied to the real ones too; `built_bytes`: what
    building the real model holds beyond the traced step (a sharded model is built whole). `sharded`: a
    real step that fails is the sharded set-up's, not the file's (a gather on the fake process group leaves
    its output as allocated, so a model that checks its values may stop): the comparison is skipped. Returns
    the comparison (or why none ran) and the smallest batch."""
    if fake is None:
        fake = StepTracer(spec, fake=True, seed=seed, smallest=smallest, build_fake=build_fake, batch_on_host=False)
    cost, limit = fake.peak(2 * smallest) + built_bytes, real_step_limit()
    if cost > limit:
        return Fidelity(skipped=f"a step at batch {2 * smallest} holds {format_bytes(cost)} as traced, more than "
                                f"the {format_bytes(limit)} a check spends on real steps here"), smallest
    if contract is not None:
        smallest = contract()
    try:
        real = StepTracer(spec, fake=False, seed=seed, smallest=smallest, configure=configure, prepare=prepare)
        return Fidelity(_compared(spec, fake, real, smallest), contract_ran=contract is not None), smallest
    except (ProbeFailed, BadInput) as exc:
        if not sharded:
            raise
        return Fidelity(skipped=f"real CPU steps could not run sharded ({one_line(exc, 160)})",
                        contract_ran=contract is not None), smallest


def _compared(spec: ModelSpec, fake: StepTracer, real: StepTracer, smallest: int) -> dict[int, tuple[int, int]]:
    """(fake peak, real peak) at the smallest batch and twice it, each side holding the batch alike."""
    points = {}
    host = [where is not None for where in fake.layout]
    for size in (smallest, 2 * smallest):
        if fake.shapes_vary or (any(host) and not all(host)):  # the same drawn batch on both sides, compact
            drawn = spec.batch(size)
            points[size] = (fake.peak_like(drawn), real.peak_like(drawn))
        elif all(host):  # batch() as the host holds it, on both sides (the fake trace's peaks are reused)
            points[size] = (fake.peak(size), real.peak(size))
        else:  # one compact copy a tensor, as a device holds it
            points[size] = (fake.peak(size), real.peak_like(spec.batch(size)))
    return points


class Corrected:
    """A tracer whose every peak carries the gap real steps showed (see Fidelity.gap)."""

    def __init__(self, tracer, fidelity: Fidelity):
        self.tracer, self.fidelity, self.fake = tracer, fidelity, tracer.fake

    def peak(self, batch: int) -> int:
        return self.tracer.peak(batch) + self.fidelity.gap(batch)

    def __getattr__(self, name):
        return getattr(self.tracer, name)
