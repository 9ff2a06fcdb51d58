"""Each optimizer's divisor D is the one its own update divides by: a step with that gradient moves the
parameter by -lr * g / D (up to one scalar for Adafactor), with the second moment updated by g."""

import pytest
import torch

from advisor import preconditioners


def _trained(make, steps=3, seed=0):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(6, 5))
    opt = make([p])
    for _ in range(steps):
        p.grad = torch.randn(6, 5)
        opt.step()
    return p, opt


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=1.0, betas=(0.0, 0.99)),
    lambda ps: torch.optim.AdamW(ps, lr=1.0, betas=(0.0, 0.9), weight_decay=0.0),
    lambda ps: torch.optim.Adam(ps, lr=1.0, betas=(0.0, 0.99), amsgrad=True),
    lambda ps: torch.optim.RMSprop(ps, lr=1.0, alpha=0.9),
    lambda ps: torch.optim.RMSprop(ps, lr=1.0, alpha=0.9, centered=True),
    lambda ps: torch.optim.Adagrad(ps, lr=1.0),
    lambda ps: torch.optim.Adamax(ps, lr=1.0, betas=(0.0, 0.99)),
], ids=["adam", "adamw", "amsgrad", "rmsprop", "rmsprop-centered", "adagrad", "adamax"])
@pytest.mark.parametrize("steps", [0, 3])
def test_the_divisor_is_the_update_s(make, steps):
    p, opt = _trained(make, steps)
    kind, note = preconditioners.geometry(opt)
    assert kind != "raw" and note is None
    g = torch.randn(6, 5)
    d = preconditioners.divisor(opt, kind, p, g.double())
    before = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    assert torch.allclose((before - p.detach()).double(), g.double() / d, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 5), (7,)])
@pytest.mark.parametrize("steps", [0, 3])
def test_torch_adafactor_s_update_is_the_gradient_over_the_divisor_times_one_scalar(shape, steps):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(*shape))
    opt = torch.optim.Adafactor([p], lr=0.01)
    for _ in range(steps):
        p.grad = torch.randn(*shape)
        opt.step()
    kind, _ = preconditioners.geometry(opt)
    assert kind == "adafactor"
    g = torch.randn(*shape)
    d = preconditioners.divisor(opt, kind, p, g.double())
    before = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    ratio = (before - p.detach()).double() / (g.double() / d)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-3)


def test_sgd_is_raw_without_a_note_and_unknown_or_sign_optimizers_are_raw_with_one():
    p = torch.nn.Parameter(torch.zeros(3))
    assert preconditioners.geometry(torch.optim.SGD([p], lr=0.1, momentum=0.9)) == ("raw", None)

    class Lion(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-4})

    class Shampoo(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-4})

    kind, note = preconditioners.geometry(Lion([p]))
    assert kind == "raw" and "sign" in note
    kind, note = preconditioners.geometry(Shampoo([p]))
    assert kind == "raw" and "Shampoo" in note and preconditioners.divisor(Shampoo([p]), kind, p, p.double()) is None


def test_hugging_face_style_adafactor_state_is_read_without_betas():
    """transformers' Adafactor keeps exp_avg_sq_row/_col and no 'betas' (a KeyError in the old probe)."""

    class Adafactor(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": None, "eps": (1e-30, 1e-3), "decay_rate": -0.8, "beta1": None})

    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = Adafactor([p])
    row, col = torch.rand(4) + 0.1, torch.rand(3) + 0.1
    opt.state[p] = {"step": 5, "exp_avg_sq_row": row, "exp_avg_sq_col": col}
    kind, _ = preconditioners.geometry(opt)
    g = torch.randn(4, 3).double()
    d = preconditioners.divisor(opt, kind, p, g)
    rate = 6 ** -0.8
    r = (1 - rate) * row.double() + rate * (g * g + 1e-30).mean(-1)
    c = (1 - rate) * col.double() + rate * (g * g + 1e-30).mean(-2)
    assert torch.allclose(d * d, (r / r.mean()).unsqueeze(-1) * c.unsqueeze(-2))
