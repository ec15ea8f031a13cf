"""A PyTorch peer for the train-step benchmark: Hugging Face GPT-2 of the same shapes, on CPU. A
test-only reference (torch never enters the runtime), run as its own command:

  python tests/pytorch_peer.py --config=experiments/<name>.py [--steps=N] [--warmup=N] [--pytorch_bf16]
      [--pytorch_compile] [--config.<key>=...]
      `scripts/benchmark.py --mode=train` (the same function, research/perf/benchmark.py) and then this
      peer on the same machine, one after the other: one JSON line with both, pytorch_tokens_per_sec
      and ratio_to_pytorch.

The step trains exactly `batch_size * seq_len` tokens, as the JAX side does: random tokens of
length `seq_len + 1` are split into inputs `[:, :-1]` and targets `[:, 1:]`, and the loss is the
mean token cross-entropy computed here from float32 logits (no `labels=` to the model, whose
internal shift would train only `seq_len - 1` tokens per row).

torch and transformers are optional (requirements-test.txt, never requirements.txt): they are
imported inside `benchmark_pytorch_gpt2`, so importing this module needs neither.
"""
from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

# The JAX activations by their Hugging Face names. gelu_tanh -> "gelu_pytorch_tanh": the same
# function as "gelu_new" (tanh approximation) but one native kernel instead of ~8 eager ops.
_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
_NO_DECAY = ("transformer.wte.", "transformer.wpe.")  # embeddings; 1-D norms/biases by rank
MISSING_TORCH = "the PyTorch peer needs torch and transformers: pip install -r requirements-test.txt"


def missing_dependencies() -> str | None:
  """MISSING_TORCH when torch or transformers is not installed, else None (neither is imported)."""
  if any(importlib.util.find_spec(name) is None for name in ("torch", "transformers")):
    return MISSING_TORCH
  return None


def _spread(times: list[float]) -> dict:
  t = np.asarray(times) * 1000
  return {"step_time_ms": float(np.median(t)), "step_time_ms_p10": float(np.percentile(t, 10)),
          "step_time_ms_p90": float(np.percentile(t, 90))}


def check_supported(model_cfg) -> None:
  """Raises ValueError (one line) on a model switch GPT-2 cannot express; needs neither torch nor
  transformers, so a script can check before it runs anything (the vocabulary may still be 0)."""
  m = model_cfg
  unsupported = {"norm": "layernorm", "position": "learned", "use_bias": True}
  for key, want in unsupported.items():
    if key in m and m[key] != want:
      raise ValueError(f"pytorch peer supports only model.{key}={want!r}, got {m[key]!r}")
  if m.get("num_kv_heads", 0) not in (0, m.num_heads) or m.get("head_dim", 0) not in (0, m.embed_dim // m.num_heads):
    raise ValueError("pytorch peer supports only multi-head attention with head_dim = embed_dim // num_heads")
  if m.mlp_activation not in _ACTIVATIONS:
    raise ValueError(f"pytorch peer supports only mlp_activation in {sorted(_ACTIVATIONS)}, got {m.mlp_activation!r}")


def _gpt2_config(transformers, model_cfg):
  """A GPT2Config with the shapes of `model_cfg`; raises on switches GPT-2 cannot express."""
  check_supported(model_cfg)
  m = model_cfg
  if m.vocab_size <= 0:  # 0 (the tokenizer's size) is resolved before this runs
    raise ValueError(f"pytorch peer needs model.vocab_size > 0, got {m.vocab_size}")
  return transformers.GPT2Config(
      vocab_size=m.vocab_size, n_positions=m.max_seq_len, n_embd=m.embed_dim, n_layer=m.num_layers,
      n_head=m.num_heads, n_inner=m.mlp_dim or 4 * m.embed_dim,
      activation_function=_ACTIVATIONS[m.mlp_activation], layer_norm_epsilon=m.norm_eps,
      resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=0.0,  # JAX: no attention-prob dropout
      initializer_range=m.init_std, tie_word_embeddings=m.tie_embeddings, use_cache=False,
      bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")


def benchmark_pytorch_gpt2(model_cfg, batch_size: int, seq_len: int, opt_cfg, steps: int, warmup: int,
                           compile: bool = False, bf16_autocast: bool = False) -> dict:  # pylint: disable=redefined-builtin
  """Timed AdamW train steps of a GPT2LMHeadModel on random tokens, after `warmup` steps.

  Weight decay applies to >= 2-D weights except the token and position embeddings (so an untied
  lm_head is decayed, as on the JAX side); the learning rate is constant at its peak.
  """
  try:
    import torch
    import torch.nn.functional as F
    import transformers
  except ImportError as e:
    raise RuntimeError(MISSING_TORCH) from e
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(_gpt2_config(transformers, model_cfg))
  model.train()
  decay, no_decay = [], []
  for name, p in model.named_parameters():  # tied lm_head.weight is wte.weight: listed once
    (decay if p.ndim >= 2 and not name.startswith(_NO_DECAY) else no_decay).append(p)
  o = opt_cfg
  # fused=True: a single multi-tensor CPU kernel (torch >= 2.4); the CPU default is a per-tensor loop.
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
      lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps, fused=True)
  params = decay + no_decay

  def loss_fn(inputs, targets):
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

  forward = torch.compile(loss_fn) if compile else loss_fn
  gen = torch.Generator().manual_seed(0)

  def step():
    tokens = torch.randint(0, model_cfg.vocab_size, (batch_size, seq_len + 1), generator=gen)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
      loss = forward(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    if o.grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(params, o.grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())

  for _ in range(warmup):
    step()
  times, losses = zip(*(step() for _ in range(steps)))
  spread = _spread(list(times))
  return {"framework": "pytorch", "torch_version": torch.__version__,
          "transformers_version": transformers.__version__,
          "tokens_per_sec": batch_size * seq_len / (spread["step_time_ms"] / 1000), **spread,
          "compile": compile, "bf16_autocast": bf16_autocast, "final_loss": losses[-1],
          "parameters": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> None:
  import json
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  from research.perf import host_malloc
  malloc = host_malloc.configure()  # before JAX starts its CPU client, as scripts/benchmark.py does
  from absl import app, flags, logging
  from research.config.cli import absl_flags_parser, load_config
  flags.DEFINE_string("config", None, "Experiment file, optionally with a variant: experiments/x.py[:arg].")
  flags.DEFINE_integer("steps", 20, "Measured steps of each side.")
  flags.DEFINE_integer("warmup", 3, "Steps before measuring.")
  flags.DEFINE_bool("pytorch_compile", False, "torch.compile the PyTorch model.")
  flags.DEFINE_bool("pytorch_bf16", False, "Run PyTorch under bf16 autocast.")
  flags.mark_flags_as_required(["config"])
  parse, overrides = absl_flags_parser(flags.FLAGS)

  def run(_):
    f = flags.FLAGS
    logging.set_verbosity(logging.ERROR)
    if missing := missing_dependencies():
      sys.exit(f"error: {missing}")
    cfg = load_config(f.config, overrides)
    try:
      check_supported(cfg.model)  # before the JAX side runs, not after
    except ValueError as e:
      sys.exit(f"error: {e}")
    from research.perf.benchmark import benchmark_train
    result = benchmark_train(cfg, f.steps, f.warmup)
    t = cfg.train
    peer = benchmark_pytorch_gpt2(cfg.model, t.batch_size, t.seq_len, cfg.optimizer, f.steps, f.warmup,
                                  compile=f.pytorch_compile, bf16_autocast=f.pytorch_bf16)
    result.update(pytorch=peer, pytorch_tokens_per_sec=peer["tokens_per_sec"],
                  ratio_to_pytorch=result["tokens_per_sec"] / peer["tokens_per_sec"], config=f.config,
                  overrides=overrides, host_malloc=malloc, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result))

  app.run(run, argv=argv, flags_parser=parse)


if __name__ == "__main__":
  main()
