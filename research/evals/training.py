"""`train.eval_tasks` during training: the tasks of research/evals on the run's own parameters at
every evaluation (and the final one), written beside the task's metrics as eval_<name>_<metric>
(spec.LOGGED_METRICS).

Everything that reads files runs once, at setup (before the first step): the data is read, checked
and tokenized into requests then, so a bad line stops the run before it trains. Each evaluation
scores the same requests through the same scoring as scripts/eval.py (scoring.Scorer), jitted
with the train state's parameter shardings on the run's mesh, rows of [train.batch_size,
train.seq_len] (one compile), packed. Every process runs it with the same rows (a collective) and
reads the same replicated result; process 0 writes it.
"""
from __future__ import annotations

import os

from research.evals import data as eval_data
from research.evals.runner import Runner
from research.evals.spec import DEFAULT_SEED, LOGGED_METRICS, EvalTaskSpec, parse_specs


class TrainingEvals:
  """run(params) -> {eval_<name>_<metric>: value} for every train.eval_tasks entry."""

  def __init__(self, cfg, program, tokenizer, data=None, log=print):
    self.specs = parse_specs(cfg.train.eval_tasks)
    t = cfg.train
    self.context, self.log = t.seq_len, log
    self._prepared, self._scorer, self._classify, self.task = {}, None, None, program.task
    for spec in self.specs:
      self._prepared[spec.name] = self._prepare(spec, cfg, program, tokenizer, data)
    log(f"eval_tasks: {', '.join(f'{s.name} ({s.kind}, {s.data})' for s in self.specs)}; rows of "
        f"{t.batch_size} x {self.context}")

  def _lm_scorer(self, cfg, program):
    if self._scorer is None:
      from research.evals.scoring import Scorer, make_logprob_fn
      runner = Runner.on_mesh(make_logprob_fn(program.graphdef), None, program.shardings.params,
                              program.mesh, program.rules)
      self._scorer = Scorer(runner, self.context, cfg.train.batch_size, packing=True, row_lengths=(self.context,))
    return self._scorer

  def _prepare(self, spec: EvalTaskSpec, cfg, program, tokenizer, data):
    if spec.kind == "classify":
      from research.evals.classify import example_batches, label_indices, probability_fn
      records = eval_data.read_labelled(spec.data, spec.option("text_field", cfg.data.text_field),
                                        spec.option("label_field", cfg.data.label_field))
      true_N = label_indices(records, tuple(cfg.classify.labels))
      if self._classify is None:
        self._classify = Runner.on_mesh(probability_fn(program.graphdef, program.task), None,
                                        program.shardings.params, program.mesh, program.rules)
      return true_N, example_batches(tokenizer, [r["text"] for r in records], cfg.train.seq_len, cfg.train.batch_size)
    from research.evals import likelihood
    self._lm_scorer(cfg, program)
    if spec.kind == "mc":
      items = eval_data.read_choices(spec.data)
      k, fewshot = spec.option("num_fewshot", 0), spec.option("fewshot_data")
      same = bool(fewshot) and os.path.realpath(fewshot) == os.path.realpath(spec.data)
      pool = (items if same else eval_data.read_choices(fewshot)) if k else None
      return likelihood.prepare_mc(tokenizer, items, self.context, pool, k, spec.option("seed", DEFAULT_SEED), same)
    if spec.data == eval_data.VALIDATION:
      docs = eval_data.source_validation_documents(data.sources)
    else:
      docs = eval_data.read_documents(spec.data, spec.option("text_field", cfg.data.text_field), cfg.data.doc_split)
    return likelihood.prepare_perplexity(tokenizer, docs, self.context, spec.option("stride"))

  def run(self, params) -> dict[str, float]:
    from research.evals import likelihood
    from research.evals.classify import classification_result, runner_probabilities
    out = {}
    for spec in self.specs:
      prepared = self._prepared[spec.name]
      if spec.kind == "classify":
        true_N, batches = prepared
        probs_NxC = runner_probabilities(self._classify.with_params(params), batches, len(true_N))
        result = classification_result(probs_NxC, true_N, self.task)
      else:
        scores = self._scorer.with_params(params).score(prepared.requests)
        result = (likelihood.mc_result if spec.kind == "mc" else likelihood.perplexity_result)(prepared, scores)
      out.update({f"eval_{spec.name}_{m}": float(result[m]) for m in LOGGED_METRICS[spec.kind]})
    return out


