"""Libraries that take another path when they see fake tensors, told for the trace that they are real.

A fake trace must follow the path real training takes. transformers treats a FakeTensor as a sign of graph
tracing (`transformers.utils.import_utils.is_fake_tensor`, used by `is_tracing`) and then materializes the
B x 1 x L x L causal mask that real training skips (it lets SDPA apply `is_causal` instead): a larger peak,
and on a GPU profile a masked attention kernel where the real step runs flash. While a step is traced, that
check answers False; the value it then reads (`padding_mask.all()`) is the fake trace's stand-in value
(advisor/memory/fake_kernels.py), true, as an unpadded batch's is.
"""

import contextlib
import sys


@contextlib.contextmanager
def as_real_training():
    """Within: libraries already imported by the model file see fake tensors as they see real ones."""
    utils = sys.modules.get("transformers.utils.import_utils")
    original = getattr(utils, "is_fake_tensor", None) if utils is not None else None
    if original is None:
        yield
        return
    utils.is_fake_tensor = lambda x: False
    try:
        yield
    finally:
        utils.is_fake_tensor = original
