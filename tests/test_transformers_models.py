"""transformers' own models, built from a config (no download), traced as they train: skipped where
transformers is not installed (it is not a dependency). Truth: real CPU steps' tracked peak."""

import pytest

pytest.importorskip("transformers")

from advisor.memory.trace import StepTracer  # noqa: E402
from advisor.spec import load_spec  # noqa: E402

LLAMA = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa")

def model():
    m = LlamaForCausalLM(CONFIG).eval()  # as from_pretrained returns it
    if CHECKPOINT:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return m

def batch(n):
    ids = torch.randint(0, 96, (n, 24))
    return {"input_ids": ids, "labels": ids}
"""


@pytest.mark.parametrize("checkpoint", [False, True], ids=["plain", "gradient-checkpointing"])
def test_transformers_llama_fake_equals_real(write_model, checkpoint):
    spec = load_spec(write_model(f"CHECKPOINT = {checkpoint}\n" + LLAMA))
    real = StepTracer(spec, fake=False)
    fake = StepTracer(spec, fake=True, build_fake=True)
    for size in (2, 5):
        assert fake.peak(size) == real.peak(size)
    assert any("eval mode" in n for n in spec.notes)
