"""Texts -> TokenRequests: (context, continuation) pairs as lm-evaluation-harness 0.4 encodes them,
and documents as sliding windows over the context.

Pairs (`encode_pair`, lm-eval's `loglikelihood` + `_encode_pair` for causal models): trailing
whitespace of the context moves to the front of the continuation; whole = encode(context +
continuation), context_enc = encode(context), continuation_enc = whole[len(context_enc):]. encode()
adds no special tokens (lm-eval's default add_bos_token=False). An empty context becomes the one
token `prefix_token_id` (BOS for tokenizers whose model expects BOS before a document, else EOS,
the end-of-text token: lm-eval's prefix_token_id for such tokenizers); when the continuation
itself starts with that token, it is the context instead. A pair longer than the context keeps its
last context + 1 tokens (lm-eval's left truncation); a continuation longer than the context is an
error.

Documents (`rolling_requests`): the document's tokens t_0..t_{n-1} follow `prefix` (what training
puts before a document: EOS, then BOS for tokenizers with add_bos), so s = prefix + t; targets are
y_j = s[j + 1] for j = 0..N-1 (N = len(s) - 1), and every t_i is scored exactly once. With context
C and stride S (1 <= S <= C), window k takes inputs s[kS : kS + C] (cut at N). Window 0 scores its
targets j < min(C, N) that are document tokens (j >= len(prefix) - 1); window k >= 1 scores the
targets j in [C + (k-1)S, min(C + kS, N)): each of those is predicted from at least C - S + 1
tokens (j - kS + 1 of them). The windows stop at the first that reaches N. S = C gives disjoint
windows (lm-eval's loglikelihood_rolling); the default S = C // 2 gives every token after the first
window at least C/2 + 1 tokens of context.
"""
from __future__ import annotations

from research.evals.scoring import TokenRequest


def prefix_token_id(tokenizer) -> int:
  """The single token an empty context becomes."""
  return tokenizer.bos_id if tokenizer.add_bos else tokenizer.eos_id


def document_prefix(tokenizer) -> list[int]:
  """What precedes every document in training (research/data/rows.py: each document ends with EOS,
  and starts with BOS for tokenizers with add_bos), so a document's first token is predicted too."""
  return [tokenizer.eos_id] + ([tokenizer.bos_id] if tokenizer.add_bos else [])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(context_enc, continuation_enc), as lm-eval 0.4's loglikelihood tokenizes a request."""
  if context == "":
    continuation_enc = tokenizer.encode(continuation)
    prefix = prefix_token_id(tokenizer)
    if continuation_enc and continuation_enc[0] == prefix:
      return continuation_enc[:1], continuation_enc[1:]
    return [prefix], continuation_enc
  spaces = len(context) - len(context.rstrip())
  if spaces:
    continuation, context = context[-spaces:] + continuation, context[:-spaces]
  whole = tokenizer.encode(context + continuation)
  context_enc = tokenizer.encode(context)
  return context_enc, whole[len(context_enc):]


def pair_request(context_enc: list[int], continuation_enc: list[int], context_len: int) -> TokenRequest:
  """The continuation scored after the context, the context cut on the left to fit `context_len`
  inputs (lm-eval: (context_enc + continuation_enc)[-(max_length + 1):])."""
  if not continuation_enc:
    raise ValueError("the continuation has no tokens")
  if len(continuation_enc) > context_len:
    raise ValueError(f"the continuation is {len(continuation_enc)} tokens, longer than the context of "
                     f"{context_len}")
  tokens = (list(context_enc) + list(continuation_enc))[-(context_len + 1):]
  return TokenRequest(tuple(tokens), len(continuation_enc))


def rolling_requests(tokens: list[int], prefix: list[int], context_len: int, stride: int) -> list[TokenRequest]:
  """The windows that score every one of `tokens` exactly once after `prefix` (rule above)."""
  if not 1 <= stride <= context_len:
    raise ValueError(f"stride {stride} must be in [1, {context_len}] (the context)")
  if not tokens:
    return []
  s = list(prefix) + list(tokens)
  n_targets, first = len(s) - 1, len(prefix) - 1   # targets j >= first are document tokens
  out, k = [], 0
  while True:
    begin = k * stride
    end = min(begin + context_len, n_targets)           # targets [begin, end) are in the window
    scored_from = max(first, 0) if k == 0 else context_len + (k - 1) * stride
    out.append(TokenRequest(tuple(s[begin:end + 1]), end - scored_from))
    if end == n_targets:
      return out
    k += 1
