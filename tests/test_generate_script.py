"""scripts/generate.py on the session's tiny pretrained run: JSON completions reproducible from the
seed, a single prompt streamed, beam search, and one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "generate.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_json_completions_streaming_and_beams(pretrained, tmp_path):
  _, workdir = pretrained
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "KING"}\n\n{"prompt": "The "}\n')
  common = ["--checkpoint", str(workdir), "--prompts_file", str(prompts), "--max_new_tokens=6", "--json",
            "--num_return_sequences=2", "--seed=4", "--temperature=1.0", "--top_k=20"]
  first = _run(*common)
  assert first.returncode == 0, first.stderr
  rows = [json.loads(line) for line in first.stdout.splitlines()]
  assert [(r["prompt_index"], r["index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert all(r["finish_reason"] in ("stop", "length") and len(r["logprobs"]) == len(r["token_ids"]) for r in rows)
  again = _run(*common)
  assert again.stdout == first.stdout                      # the seed fixes the samples
  import research
  from research.infer.engine import Engine, SamplingParams
  from research.infer.generate import prompt_ids
  engine = Engine.from_checkpoint(str(workdir), num_slots=4)
  greedy = engine.generate([prompt_ids(engine.tokenizer, "KING")], SamplingParams(max_new_tokens=6, temperature=0))[0]
  streamed = _run("--workdir", str(workdir), "--prompt", "KING", "--max_new_tokens=6", "--temperature=0")
  assert streamed.returncode == 0, streamed.stderr
  assert streamed.stdout == "KING" + greedy.text + "\n"
  beams = _run("--workdir", str(workdir), "--prompt", "KING", "--max_new_tokens=6", "--num_beams=3",
               "--num_return_sequences=2", "--json")
  assert beams.returncode == 0, beams.stderr
  assert len(beams.stdout.splitlines()) == 2
  assert research.load_tokenizer(str(workdir)) is not None


def test_errors_are_one_line(pretrained, tmp_path):
  _, workdir = pretrained
  missing = _run("--workdir", str(workdir), "--prompts_file", str(tmp_path / "none.txt"))
  assert missing.returncode == 1 and missing.stderr.strip() == f"error: {tmp_path / 'none.txt'}: no such file (--prompts_file)"
  both = _run("--workdir", str(workdir), "--checkpoint", str(workdir), "--prompt", "x")
  assert both.returncode == 1 and "exactly one of --workdir, --checkpoint" in both.stderr
  bad = _run("--workdir", str(workdir), "--prompt", "x", "--top_p=0")
  assert bad.returncode == 1 and "top_p=0.0 must be in (0, 1]" in bad.stderr
