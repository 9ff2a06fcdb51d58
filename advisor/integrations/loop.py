"""A plain PyTorch training function, given the advice: `@advised(model, batch, **options)`.

    @advised(make_model, draw_batch, device="cpu", noise_budget="40steps")
    def train(advice, epochs):
        loader = DataLoader(dataset, batch_size=advice.micro_batch, shuffle=True)
        opt = torch.optim.SGD(net.parameters(), lr=advice.learning_rate)
        ...  # step the optimizer every advice.accumulation_steps micro-batches, warm up advice.warmup_steps

    train(epochs=3)   # advises first (advisor.recommend), then calls train(report, epochs=3)
"""

from __future__ import annotations

import functools

from advisor import api


def advised(model, batch=None, **options):
    """Decorate a training function: each call first runs `advisor.recommend(model, batch, **options)` and passes
    the Report as the first argument (`.micro_batch`, `.accumulation_steps`, `.learning_rate`, `.warmup_steps`)."""
    def decorate(train):
        @functools.wraps(train)
        def with_advice(*args, **kwargs):
            return train(api.recommend(model, batch, **options), *args, **kwargs)
        return with_advice
    return decorate
