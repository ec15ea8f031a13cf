"""Temperature sampling by re-running the full forward pass per token (no KV cache: fine for the
short samples printed at the end of training)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_tokens(graphdef, params, prompt_BxP: np.ndarray, num_tokens: int, temperature: float,
                  seed: int, max_len: int) -> np.ndarray:
  """Returns [B, P + num_tokens] ids; the window slides when P + num_tokens exceeds max_len."""
  b, p = prompt_BxP.shape
  total = p + num_tokens
  window = min(total, max_len)

  @jax.jit
  def next_token(params, tokens_BxW, length, key):
    logits = nnx.merge(graphdef, params)(tokens_BxW)
    last_BxV = jnp.take_along_axis(logits, (length - 1)[None, None, None].repeat(b, 0), axis=1)[:, 0]
    if temperature == 0:
      return jnp.argmax(last_BxV, -1)
    return jax.random.categorical(key, last_BxV / temperature, axis=-1)

  tokens = np.zeros((b, total), np.int32)
  tokens[:, :p] = prompt_BxP
  key = jax.random.PRNGKey(seed)
  for t in range(p, total):
    start = max(0, t - window)
    buf = np.zeros((b, window), np.int32)
    buf[:, : t - start] = tokens[:, start:t]
    key, sub = jax.random.split(key)
    tokens[:, t] = np.asarray(next_token(params, buf, jnp.int32(t - start), sub))
  return tokens


def sample_text(graphdef, params, tokenizer, prompts: list[str], num_tokens: int, temperature: float,
                seed: int, max_len: int) -> list[str]:
  # An empty prompt starts after EOS, the token that precedes every document in training (and BOS,
  # which starts every document for tokenizers whose models expect it).
  bos = [tokenizer.bos_id] if getattr(tokenizer, "add_bos", False) else []
  encoded = [(bos + tokenizer.encode(p)) if p else [tokenizer.eos_id] + bos for p in prompts]
  width = max(len(e) for e in encoded)
  # Left-align prompts of equal length only: pad shorter ones by repeating their first token.
  prompt = np.asarray([[e[0]] * (width - len(e)) + e for e in encoded], np.int32)
  out = sample_tokens(graphdef, params, prompt, num_tokens, temperature, seed, max_len)
  return [tokenizer.decode(row[width - len(e):]) for row, e in zip(out, encoded)]
