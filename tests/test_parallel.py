"""The same config on 1 device and on 8 CPU devices under several meshes gives the same losses."""
import jax
import numpy as np
import pytest

from research.sharding import logical_to_spec, make_mesh
from research.sharding.rules import DEFAULT_RULES
from research.train.program import build_program
from research.train.setup import prepare_task


def run_steps(cfg, devices, num_steps=3):
  _, data = prepare_task(cfg, log=lambda *a: None)
  program = build_program(cfg, make_mesh(cfg.mesh.shape, devices))
  state = program.init_state()
  step = program.compile_train_step()
  batches = iter(data.train_dataset(cfg.train.batch_size, cfg.train.seq_len, cfg.seed))
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, program.put_batch(next(batches)))
    losses.append(float(metrics["loss"]))
  return losses, state


@pytest.fixture
def parallel_cfg(tiny_cfg):
  cfg = tiny_cfg
  cfg.model.num_heads = 4
  cfg.model.num_kv_heads = 2
  cfg.model.embed_dim = 32
  cfg.model.mlp_dim = 64
  cfg.model.family, cfg.model.position, cfg.model.norm = "llama", "rope", "rmsnorm"
  cfg.model.mlp_activation, cfg.model.use_bias, cfg.model.tie_embeddings = "swiglu", False, False
  return cfg


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)])
def test_meshes_match_single_device(parallel_cfg, shape):
  cfg = parallel_cfg
  cfg.mesh.shape = (1, 1, 1)
  reference, _ = run_steps(cfg, jax.devices()[:1])
  cfg.mesh.shape = shape
  losses, state = run_steps(cfg, jax.devices())
  np.testing.assert_allclose(losses, reference, rtol=2e-5, atol=2e-5)
  assert losses[-1] < losses[0]
  # The parameters really are spread over the mesh: FSDP splits embed, tensor splits mlp/heads.
  up = state.params["blocks"][0]["mlp"]["up"]["kernel"]
  fsdp, tensor = shape[1], shape[2]
  assert up.addressable_shards[0].data.shape == (32 // fsdp, 64 // tensor)


def test_dcn_shape_errors_name_the_key():
  """mesh.dcn_shape must match the granules (processes here: CPU devices carry no slice index)."""
  with pytest.raises(ValueError, match=r"mesh.dcn_shape=\(2, 1, 1\) spans 2 granules, but the devices come from 1 processes"):
    make_mesh((2, 2, 2), dcn_shape=(2, 1, 1))
  with pytest.raises(ValueError, match=r"must divide mesh.shape=\(2, 2, 2\)"):
    make_mesh((2, 2, 2), dcn_shape=(1, 1, 4))
  assert make_mesh((2, 2, 2), dcn_shape=(1, 1, 1)).devices.shape == (2, 2, 2)


def test_logical_rules_map_names_to_axes():
  mesh = make_mesh((2, 2, 2))
  assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES, mesh) == jax.sharding.PartitionSpec("fsdp", "tensor")
  # activations: batch over data and fsdp together
  assert logical_to_spec(("act_batch", "act_length", "act_embed"), DEFAULT_RULES, mesh) == \
      jax.sharding.PartitionSpec(("data", "fsdp"), None, None)
  # a mesh axis that does not divide the dimension is dropped (replicated), not an error
  assert logical_to_spec(("vocab", "embed"), DEFAULT_RULES, mesh, shape=(259, 32)) == \
      jax.sharding.PartitionSpec(None, "fsdp")
  # each mesh axis is used at most once per array
  rules = (("a", "tensor"), ("b", "tensor"))
  assert logical_to_spec(("a", "b"), rules, mesh) == jax.sharding.PartitionSpec("tensor", None)
