"""The log-likelihood tasks: `perplexity` (documents, sliding windows) and `mc` (multiple choice as
lm-evaluation-harness 0.4 scores it), each a function of a Scorer, the tokenizer and the data,
returning a JSON-able result dict.

Multiple choice: each choice's continuation is " " + choice (lm-eval's target_delimiter) after the
item's context, tokenized by requests.encode_pair and scored by its summed log-likelihood (float64).
  acc       argmax_i loglik_i == gold
  acc_norm  argmax_i loglik_i / len(choice_i) == gold, len in characters of the choice without the
            delimiter (lm-eval's multiple_choice process_results: completion_len = len(choice))
  *_stderr  the sample standard deviation (n - 1) of the per-item 0/1 scores / sqrt(n) (lm-eval's
            mean_stderr); None for a single item
np.argmax takes the first of equal scores, as lm-eval does. Few-shot (num_fewshot = K > 0): for each
item in file order, K examples are drawn with one random.Random(seed) from the few-shot pool
(rnd.sample(pool, K); when the pool is the evaluated file itself, rnd.sample(pool, K + 1) without
the item, first K: lm-eval's ContextSampler), and the context becomes
  "<ctx_1> <gold choice_1>\\n\\n<ctx_2> <gold choice_2>\\n\\n...<ctx_K> <gold choice_K>\\n\\n<item context>"
(target_delimiter " ", fewshot_delimiter "\\n\\n").

Perplexity: every document's tokens scored exactly once after the training document prefix
(requests.py's window rule); num_tokens counts them, num_bytes the UTF-8 bytes of the documents;
perplexity = exp(nll_sum / num_tokens), bits_per_byte = nll_sum / ln 2 / num_bytes.
"""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

from research.data.corpus import DataError
from research.evals.data import Choice
from research.evals.requests import document_prefix, encode_pair, pair_request, rolling_requests
from research.evals.scoring import Scorer, TokenScores

TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"


# ------------------------------------------------------------------------------- perplexity

def default_stride(context: int) -> int:
  return max(context // 2, 1)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A task's requests, built once (tokenized, windowed), and what its result needs besides scores."""
  requests: list
  meta: dict
  items: list | None = None   # mc: the items, in order


def prepare_perplexity(tokenizer, documents: list[str], context: int, stride: int | None = None) -> Prepared:
  stride = stride or default_stride(context)
  if not 1 <= stride <= context:
    raise DataError(f"stride={stride} must be in [1, {context}] (the context)")
  prefix = document_prefix(tokenizer)
  requests, num_tokens, num_bytes = [], 0, 0
  for doc in documents:
    ids = tokenizer.encode(doc)
    requests += rolling_requests(ids, prefix, context, stride)
    num_tokens += len(ids)
    num_bytes += len(doc.encode("utf-8"))
  if not num_tokens:
    raise DataError("the documents hold no tokens to score")
  return Prepared(requests, {"num_documents": len(documents), "num_tokens": num_tokens, "num_bytes": num_bytes,
                             "context": context, "stride": stride, "num_windows": len(requests)})


def perplexity_result(prepared: Prepared, scores: list[TokenScores]) -> dict:
  m = prepared.meta
  nll_sum = -sum(s.total for s in scores)   # float64, in request order
  return {"num_documents": m["num_documents"], "num_tokens": m["num_tokens"], "num_bytes": m["num_bytes"],
          "nll_sum": nll_sum, "nll_per_token": nll_sum / m["num_tokens"],
          "perplexity": math.exp(min(nll_sum / m["num_tokens"], 700.0)),
          "bits_per_byte": nll_sum / math.log(2) / m["num_bytes"],
          "context": m["context"], "stride": m["stride"], "num_windows": m["num_windows"]}


def perplexity(scorer: Scorer, tokenizer, documents: list[str], stride: int | None = None) -> dict:
  prepared = prepare_perplexity(tokenizer, documents, scorer.context, stride)
  return perplexity_result(prepared, scorer.score(prepared.requests))


# ------------------------------------------------------------------------------- multiple choice

def fewshot_contexts(items: list[Choice], pool: list[Choice], num_fewshot: int, seed: int,
                     pool_is_items: bool) -> list[str]:
  """Each item's context with its few-shot examples before it (rendering in the module docstring)."""
  if num_fewshot == 0:
    return [item.context for item in items]
  need = num_fewshot + (1 if pool_is_items else 0)
  if need > len(pool):
    raise DataError(f"num_fewshot={num_fewshot} needs {need} few-shot examples"
                    + (" (the item itself excluded)" if pool_is_items else "") + f"; the pool holds {len(pool)}")
  rnd, out = random.Random(seed), []
  for item in items:
    if pool_is_items:
      shots = [ex for ex in rnd.sample(pool, need) if ex.key() != item.key()][:num_fewshot]
      if len(shots) < num_fewshot:  # copies of the item drawn: again from the pool without any
        shots = rnd.sample([ex for ex in pool if ex.key() != item.key()], num_fewshot)
    else:
      shots = rnd.sample(pool, num_fewshot)
    out.append("".join(ex.context + TARGET_DELIMITER + ex.choices[ex.gold] + FEWSHOT_DELIMITER for ex in shots)
               + item.context)
  return out


def prepare_mc(tokenizer, items: list[Choice], context: int, pool: list[Choice] | None = None,
               num_fewshot: int = 0, seed: int = 1234, pool_is_items: bool = False) -> Prepared:
  """One TokenRequest per (item, choice), items in order, choices in order."""
  contexts = fewshot_contexts(items, pool or [], num_fewshot, seed, pool_is_items)
  requests = []
  for item, ctx in zip(items, contexts):
    for i, choice in enumerate(item.choices):
      context_enc, continuation_enc = encode_pair(tokenizer, ctx, TARGET_DELIMITER + choice)
      try:
        requests.append(pair_request(context_enc, continuation_enc, context))
      except ValueError as e:
        raise DataError(f"{item.where}: choice {i}: {e}") from None
  return Prepared(requests, {"num_fewshot": num_fewshot, "seed": seed, "context": context}, items)


def _stderr(scores: np.ndarray) -> float | None:
  if len(scores) < 2:
    return None
  return float(np.std(scores, ddof=1) / math.sqrt(len(scores)))


def mc_result(prepared: Prepared, scores: list[TokenScores]) -> dict:
  acc, acc_norm, lls, at = [], [], [], 0
  for item in prepared.items:
    ll = np.asarray([s.total for s in scores[at:at + len(item.choices)]], np.float64)
    at += len(item.choices)
    lengths = np.asarray([float(len(c)) for c in item.choices])
    acc.append(float(np.argmax(ll) == item.gold))
    acc_norm.append(float(np.argmax(ll / lengths) == item.gold))
    lls.append(ll.tolist())
  acc_a, acc_norm_a = np.asarray(acc), np.asarray(acc_norm)
  return {"num_examples": len(prepared.items), "acc": float(acc_a.mean()), "acc_stderr": _stderr(acc_a),
          "acc_norm": float(acc_norm_a.mean()), "acc_norm_stderr": _stderr(acc_norm_a), **prepared.meta,
          "num_requests": len(prepared.requests),
          "num_tokens": int(sum(r.num_scored for r in prepared.requests)), "loglikelihoods": lls}


def multiple_choice(scorer: Scorer, tokenizer, items: list[Choice], pool: list[Choice] | None = None,
                    num_fewshot: int = 0, seed: int = 1234, pool_is_items: bool = False) -> dict:
  prepared = prepare_mc(tokenizer, items, scorer.context, pool, num_fewshot, seed, pool_is_items)
  return mc_result(prepared, scorer.score(prepared.requests))


# ------------------------------------------------------------------------------- for other modules (a server)

def loglikelihood(scorer: Scorer, tokenizer, pairs) -> list[tuple[float, bool]]:
  """lm-eval's loglikelihood: for each (context, continuation) the continuation's summed
  log-probability (float64) and whether every one of its tokens was the argmax."""
  requests = [pair_request(*encode_pair(tokenizer, c, x), scorer.context) for c, x in pairs]
  return [(s.total, s.is_greedy) for s in scorer.score(requests)]


def loglikelihood_rolling(scorer: Scorer, tokenizer, texts, stride: int | None = None) -> list[float]:
  """Each text's summed log-probability of all its tokens after the training document prefix
  (sliding windows, stride default context // 2: requests.py's rule)."""
  stride = stride or default_stride(scorer.context)
  per_text = [rolling_requests(tokenizer.encode(t), document_prefix(tokenizer), scorer.context, stride)
              for t in texts]
  scores = scorer.score([r for rs in per_text for r in rs])
  out, at = [], 0
  for rs in per_text:
    out.append(sum(s.total for s in scores[at:at + len(rs)]))
    at += len(rs)
  return out
