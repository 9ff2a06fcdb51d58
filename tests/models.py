"""Model-file sources the tests share (each is a complete bsadvisor model file)."""

# A student MLP learning a fixed random teacher's classes: a real signal, so the noise scale is finite.
MLP = """
import torch
BASE_BATCH_SIZE = 16
TEACHER = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))

def model():
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 5))

def batch(n):
    x = torch.randn(n, 20)
    return x, (x @ TEACHER).argmax(1)
"""

# Linear regression y = x·w* + σε with x ~ N(0, I_d), loss ½(w·x − y)², at fixed weights w = w* + δ
# (SGD with lr 0 keeps them fixed). Per-example gradient g = x xᵀδ − σεx, so G = δ and, by Isserlis,
# tr Σ = (d + 1)|δ|² + dσ²: B_simple = ((d + 1)|δ|² + dσ²) / |δ|².
LINEAR_REGRESSION = """
import torch
D, SIGMA = 10, 1.0
W_STAR = torch.ones(D)
DELTA = torch.zeros(D); DELTA[0] = 1.0

def model():
    m = torch.nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(W_STAR + DELTA)
    return m

def batch(n):
    x = torch.randn(n, D)
    return x, x @ W_STAR + SIGMA * torch.randn(n)

def loss(m, b):
    x, y = b
    return 0.5 * (m(x).squeeze(1) - y).pow(2).mean()

def optimizer(params):
    return torch.optim.SGD(params, lr=0.0)
"""
LINEAR_REGRESSION_B_SIMPLE = ((10 + 1) * 1.0 + 10 * 1.0**2) / 1.0

# The same problem at the optimum (δ = 0): the true gradient is zero, only noise is left, so the
# noise scale is unbounded and no finite batch resolves it.
LINEAR_REGRESSION_AT_OPTIMUM = LINEAR_REGRESSION.replace("; DELTA[0] = 1.0", "")
assert LINEAR_REGRESSION_AT_OPTIMUM != LINEAR_REGRESSION
