"""Evaluation tasks on a model: perplexity, multiple choice (lm-evaluation-harness 0.4's
log-likelihood scoring) and a classifier's metrics, from a checkpoint (scripts/eval.py) or on the
parameters of a training run (train.eval_tasks).

  scoring.py     TokenRequest -> per-token float32 log-probabilities: rows (packed or not) of a
                 fixed [B, L] shape, one jitted function, float64 sums on the host in request order
  runner.py      that function on one device or on a run's mesh (sharded parameters, multi-process)
  requests.py    texts -> TokenRequests: lm-eval's (context, continuation) encoding; sliding windows
  likelihood.py  the perplexity and mc tasks (metrics, few-shot rendering)
  classify.py    the classify task (research/infer/classify.py's Classifier, classification_metrics)
  data.py        the evaluation files, read strictly through research/data/corpus.py (file:line errors)
  spec.py        train.eval_tasks entries: [NAME=]KIND:FILE[;key=value...]
  evaluate.py    a checkpoint's evaluation, its JSON line and table (scripts/eval.py)
  training.py    the same tasks at each evaluation of a run, logged as eval_<name>_<metric>

Owns the evaluation tasks; must not own a model, a data pipeline or a trainer (it calls them).

To score text from another module (a server): `Scorer.from_model(model, context)` (or
evaluate.load_scorer(checkpoint, ...)) then
  scorer.score([TokenRequest(tokens, num_scored), ...]) -> [TokenScores(logprobs, greedy)]
  loglikelihood(scorer, tokenizer, [(context, continuation), ...]) -> [(float64 sum, is_greedy)]
  loglikelihood_rolling(scorer, tokenizer, [text, ...]) -> [float64 sum over every token]
"""
from research.evals.requests import document_prefix, encode_pair, pair_request, rolling_requests
from research.evals.scoring import Scorer, TokenRequest, TokenScores


def loglikelihood(scorer: Scorer, tokenizer, pairs) -> list[tuple[float, bool]]:
  """lm-eval's loglikelihood: for each (context, continuation) the continuation's summed
  log-probability (float64) and whether every one of its tokens was the argmax."""
  requests = [pair_request(*encode_pair(tokenizer, c, x), scorer.context) for c, x in pairs]
  return [(s.total, s.is_greedy) for s in scorer.score(requests)]


def loglikelihood_rolling(scorer: Scorer, tokenizer, texts, stride: int | None = None) -> list[float]:
  """Each text's summed log-probability of all its tokens after the training document prefix
  (sliding windows, stride default context // 2: requests.py's rule)."""
  from research.evals.likelihood import default_stride
  stride = stride or default_stride(scorer.context)
  per_text = [rolling_requests(tokenizer.encode(t), document_prefix(tokenizer), scorer.context, stride)
              for t in texts]
  scores = scorer.score([r for rs in per_text for r in rs])
  out, at = [], 0
  for rs in per_text:
    out.append(sum(s.total for s in scores[at:at + len(rs)]))
    at += len(rs)
  return out


__all__ = ["Scorer", "TokenRequest", "TokenScores", "encode_pair", "loglikelihood", "loglikelihood_rolling",
           "pair_request", "rolling_requests"]
