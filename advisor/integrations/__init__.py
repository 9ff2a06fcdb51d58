"""The advice where people train: thin layers over the Python API (advisor/api.py), each an optional extra.

- `advisor.integrations.lightning.BatchSizeAdvisor`: a Lightning Callback that advises at the start of `fit`
  (pip install 'bsadvisor[lightning]');
- `advisor.integrations.huggingface.advised_arguments`: TrainingArguments with the advised per-device batch,
  accumulation, learning rate and warm-up, for `transformers.Trainer` (pip install 'bsadvisor[hf]');
- `advisor.integrations.loop.advised`: a decorator for a plain PyTorch training function.
"""
