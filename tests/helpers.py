"""Test helpers with no side effects (unlike conftest.py, which sets up 8 fake devices), so that
experiment files written by tests for subprocesses can import them."""
import os

from research.config import base_config
from research.models import apply_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORDS = ("the king and queen of a small land spoke to their people about bread wine rain and war "
         "while the old fool sang songs of love and loss under a grey sky").split()


def write_corpus(directory, num_files=4, lines=120, seed=0):
  """Plain-English-ish text files with some structure a model can learn."""
  import random
  rng = random.Random(seed)
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(num_files):
    text = []
    for j in range(lines):
      speaker = rng.choice(["KING", "QUEEN", "FOOL"])
      text.append(f"{speaker}.\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + ".\n")
    path = os.path.join(directory, f"play_{i}.txt")
    with open(path, "w") as f:
      f.write("\n".join(text))
    paths.append(path)
  return paths


def tiny_config(corpus: str, cache_dir: str, family: str = "gpt2"):
  """A config small enough to compile and train in seconds on CPU."""
  c = base_config()
  apply_preset(c.model, "gpt2-tiny" if family == "gpt2" else "llama-tiny")
  c.model.vocab_size = 0
  c.data.path = corpus
  c.data.val_files = ("play_3.txt",)
  c.data.tokenizer = "byte"
  c.data.cache_dir = cache_dir
  c.train.num_steps = 30
  c.train.batch_size = 8
  c.train.seq_len = 32
  c.train.log_every = 5
  c.train.eval_every = 15
  c.train.eval_batches = 4
  c.train.sample_at_end = 1
  c.train.sample_tokens = 8
  c.train.progress = False
  c.train.peak_flops = 1e12  # MFU's denominator given: no 10-20 s matmul timing at every start
                             # (test_train_script_end_to_end measures it)
  c.optimizer.learning_rate = 3e-3
  c.optimizer.final_learning_rate = 3e-4
  c.optimizer.warmup_steps = 5
  c.mesh.shape = (-1, 1, 1)
  return c


def tiny_experiment(directory, corpus: str) -> str:
  """An experiment file (for scripts run as subprocesses) whose get_config() is tiny_config(corpus)."""
  path = os.path.join(str(directory), "tiny.py")
  with open(path, "w") as f:
    f.write("from tests.conftest import tiny_config\n"
            f"def get_config():\n  return tiny_config({corpus!r}, {os.path.join(str(directory), 'cache')!r})\n")
  return path


def write_sft_records(directory, num_train=400, num_val=8, seed=0):
  """train.jsonl and val.jsonl of prompt/response records over WORDS (a speaker's name asks for a
  line): short enough that prompt and reply fit a 64-token row. Hundreds of records, because Grain
  reshuffles every epoch, which costs milliseconds even for a handful of records."""
  import json
  import random
  rng = random.Random(seed)
  os.makedirs(directory, exist_ok=True)
  for name, count in (("train.jsonl", num_train), ("val.jsonl", num_val)):
    with open(os.path.join(directory, name), "w") as f:
      for _ in range(count):
        speaker = rng.choice(["KING", "QUEEN", "FOOL"])
        reply = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        f.write(json.dumps({"prompt": f"{speaker}.", "response": reply}) + "\n")
  return str(directory)
