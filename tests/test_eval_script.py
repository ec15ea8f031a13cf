"""scripts/eval.py as a user runs it: a table on stdout, one JSON line per run in --out, and bad
input as one line on stderr with exit code 1 (no traceback)."""
import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def _run(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval.py"), *args], capture_output=True,
                        text=True, env=dict(os.environ), timeout=300)


def test_eval_script_writes_json_lines_and_refuses_bad_input_in_one_line(pretrained, tmp_path):
  _, workdir = pretrained
  items = tmp_path / "mc.jsonl"
  items.write_text("".join(json.dumps({"context": c, "choices": ["the king", "rain"], "gold": 0}) + "\n"
                           for c in ("KING.", "QUEEN.", "the old fool sang of")))
  out = tmp_path / "results.jsonl"
  step_dir = os.path.join(workdir, "checkpoints", "24")   # a step directory, as research.load_model takes
  done = _run(f"--checkpoint={step_dir}", "--task=mc", f"--data={items}", f"--out={out}", "--batch_size=2",
              "--packing=false", "--num_fewshot=1", f"--fewshot_data={items}")
  assert done.returncode == 0, done.stderr
  (line,) = [json.loads(x) for x in out.read_text().splitlines()]
  assert {"task", "checkpoint", "step", "data", "acc", "acc_norm", "acc_stderr", "acc_norm_stderr",
          "num_examples", "num_fewshot"} <= set(line)
  assert line["task"] == "mc" and line["num_examples"] == 3 and line["packing"] is False and line["step"] == 24
  assert any(row.split()[:1] == ["acc_norm"] for row in done.stdout.splitlines())
  items.write_text(items.read_text() + '{"context": "x", "choices": ["a", "b"], "gold": "a"}\n')
  for args, message in [((f"--task=mc", f"--data={items}"), f"error: {items}:4: the field 'gold' must be an integer"),
                        (("--task=bleu", f"--data={items}"),
                         "error: --task='bleu' is not one of perplexity, mc, classify"),
                        (("--task=perplexity", f"--data={tmp_path / 'none.txt'}"), "no such file")]:
    failed = _run(f"--checkpoint={workdir}", *args, f"--out={out}")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ") and message in failed.stderr
  assert len(out.read_text().splitlines()) == 1   # nothing appended by the failed runs
