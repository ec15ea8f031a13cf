"""The PyTorch peer of the train-step benchmark (`tests/pytorch_peer.py`) builds the same model as ours (the
parameter count matches, tied and untied) and runs its train steps (an untrained loss near ln V)."""
import math

import pytest

from research.config import base_config
from research.models import count_params, preset_config
from tests.pytorch_peer import benchmark_pytorch_gpt2

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("tie", [True, False])
def test_peer_has_our_parameter_count_and_trains(tie):
  cfg = preset_config("gpt2-tiny", vocab_size=256, tie_embeddings=tie)
  r = benchmark_pytorch_gpt2(cfg, 4, 32, base_config().optimizer, steps=2, warmup=1)
  assert r["parameters"] == count_params(cfg)
  assert r["tokens_per_sec"] > 0 and r["step_time_ms_p10"] <= r["step_time_ms"] <= r["step_time_ms_p90"]
  assert abs(r["final_loss"] - math.log(256)) < 0.5


def test_peer_refuses_shapes_gpt2_cannot_express():
  with pytest.raises(ValueError, match="rmsnorm|norm"):
    benchmark_pytorch_gpt2(preset_config("llama-tiny", vocab_size=256), 4, 32, base_config().optimizer, 1, 0)
