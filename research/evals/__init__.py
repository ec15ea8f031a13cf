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
(likelihood.py). Names are imported on first use, so `research.evals.spec` (the config's
validation) imports no JAX.
"""
import importlib

_EXPORTS = {"Scorer": "scoring", "TokenRequest": "scoring", "TokenScores": "scoring", "make_logprob_fn": "scoring",
            "encode_pair": "requests", "pair_request": "requests", "rolling_requests": "requests",
            "document_prefix": "requests", "loglikelihood": "likelihood", "loglikelihood_rolling": "likelihood",
            "perplexity": "likelihood", "multiple_choice": "likelihood", "load_scorer": "evaluate",
            "evaluate_checkpoint": "evaluate"}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'research.evals' has no attribute {name!r}")
  return getattr(importlib.import_module(f"research.evals.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
