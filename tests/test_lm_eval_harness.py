"""lm-evaluation-harness 0.4 itself (`local-completions`, `tokenizer_backend=remote`) against a real
scripts/serve.py process on the session's tiny checkpoint: a local multiple-choice task and a
generate_until task, offline, and its scores equal scripts/eval.py's on the same model and data
(acc, acc_norm and exact_match exactly; every item's log-likelihood within 1e-4; every response equal).
lm-eval is a test-only dependency."""
from __future__ import annotations

import json
import os
import random

import pytest

lm_eval = pytest.importorskip("lm_eval")

from tests.helpers import WORDS  # noqa: E402
from tests.serve_process import ServerProcess  # noqa: E402

MC_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""

GEN_YAML = """task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: target
generation_kwargs:
  until:
    - "."
    - "\\n"
  max_gen_toks: 12
  do_sample: false
  temperature: 0.0
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


def _items(tmp_path):
  rng = random.Random(0)
  line = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))
  mc = [{"context": f"KING.\n{line(4)}", "choices": [line(rng.randint(1, 3)) for _ in range(rng.randint(2, 4))],
         "gold": 0} for _ in range(10)]
  for item in mc:
    item["gold"] = rng.randrange(len(item["choices"]))
  mc.append({"context": "", "choices": ["the king", "a fool"], "gold": 1})   # lm-eval's prefix token
  gen = [{"context": f"QUEEN.\n{line(3)}", "target": line(2)} for _ in range(6)]
  (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
  return mc, gen


def test_lm_eval_scores_equal_scripts_eval(pretrained, tmp_path):
  from research.evals.evaluate import evaluate_checkpoint
  from research.infer.engine import Engine
  from research.evals.generation import generate_until
  from research.evals.data import read_targets
  _, workdir = pretrained
  mc, gen = _items(tmp_path)
  # Half the generation targets are what the model writes (as lm-eval's filter strips it), so the
  # exact-match score is neither 0 nor 1 and both sides must agree item by item.
  (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
  engine = Engine.from_checkpoint(str(workdir), num_slots=4)
  written = generate_until(engine, read_targets(str(tmp_path / "gen.jsonl")), (".", "\n"), 12)["responses"]
  for i in range(0, len(gen), 2):
    gen[i]["target"] = written[i].strip()
  (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  (tasks / "local_mc.yaml").write_text(MC_YAML.format(data=tmp_path / "mc.jsonl"))
  (tasks / "local_gen.yaml").write_text(GEN_YAML.format(data=tmp_path / "gen.jsonl"))

  context = engine.max_len
  ours_mc = evaluate_checkpoint(str(workdir), "mc", str(tmp_path / "mc.jsonl"), batch_size=4, context=context,
                                log=lambda *a: None)
  ours_gen = evaluate_checkpoint(str(workdir), "generate", str(tmp_path / "gen.jsonl"), until=(".", "\n"),
                                 max_gen_toks=12, context=context, log=lambda *a: None)
  assert 0 < ours_gen["exact_match"] < 1

  for key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ[key] = "1"
  server = ServerProcess(str(workdir), str(tmp_path / "serve.log"), "--num_slots=4", model_name="tiny")
  try:
    from lm_eval.tasks import TaskManager
    res = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": f"{server.url}/v1/completions", "model": "tiny", "tokenizer_backend": "remote",
                    "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1, "batch_size": 2,
                    "max_length": context},
        tasks=["local_mc", "local_gen"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True, bootstrap_iters=0)
    assert server.alive()
  finally:
    server.stop()
  theirs = res["results"]
  assert theirs["local_mc"]["acc,none"] == ours_mc["acc"]
  assert theirs["local_mc"]["acc_norm,none"] == ours_mc["acc_norm"]
  assert theirs["local_gen"]["exact_match,strip"] == ours_gen["exact_match"]
  # Item by item: each choice's log-likelihood, each response.
  by_doc = sorted(res["samples"]["local_mc"], key=lambda s: s["doc_id"])
  lls = [[ll for ll, _ in s["filtered_resps"]] for s in by_doc]
  ours_lls = ours_mc["loglikelihoods"]
  assert len(lls) == len(ours_lls) == len(mc)
  for a, b in zip(lls, ours_lls):
    assert a == pytest.approx(b, abs=1e-4)
  responses = [s["resps"][0][0] for s in sorted(res["samples"]["local_gen"], key=lambda s: s["doc_id"])]
  assert responses == ours_gen["responses"]
