"""Libraries that take another path when they see fake tensors, told for the trace that they are real.

A fake trace must follow the path real training takes. transformers treats a FakeTensor as a sign of graph
tracing (`transformers.utils.import_utils.is_fake_tensor`, used by `is_tracing`) and then materializes the
B x 1 x L x L causal mask that real training skips (it lets SDPA apply `is_causal` instead): a larger peak,
and on a GPU profile a masked attention kernel where the real step runs flash. While a step is traced, that
check answers False; the value it then reads (`padding_mask.all()`) is the fake trace's stand-in value
(advisor/memory/fake_kernels.py), true, as an unpadded batch's is.

torch itself: `Module.to(dtype)` (`.half()`, `.bfloat16()`) swaps each fake parameter for its converted twin
with `torch.utils.swap_tensors`, which refuses a tensor anything holds a weak reference to, and the fake
mode's memo holds one to every tensor it made. So a model file that converts its model in `model()` could
not be built fake. While it is built, the memo forgets the two tensors a swap exchanges (the memo maps a
tensor's description to the fake made for it, which the swap makes wrong anyway). And `copy.deepcopy` of a
fake module reads each tensor's data pointer, for which torch warns that the code "is almost definitely a
bug": true of a fake tensor, not of the file, so that warning stays quiet while it is built.
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


@contextlib.contextmanager
def as_real_construction(mode):
    """Within: `model()` builds under the fake `mode` as it builds real tensors: `Module.to(dtype)` converts
    the fake parameters `mode` made, and torch's warning on a fake tensor's data pointer stays quiet."""
    import warnings

    import torch

    original = torch.utils.swap_tensors
    # torch's private memo (2.x); a torch without it keeps its own behaviour: no patch, the warning still quiet
    memo = getattr(getattr(getattr(mode, "fake_tensor_converter", None), "meta_converter", None), "tensor_memo", {})

    def swap_tensors(t1, t2):
        for key, value in list(memo.items()):
            if value is t1 or value is t2:
                del memo[key]
        return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            yield
    finally:
        torch.utils.swap_tensors = original
