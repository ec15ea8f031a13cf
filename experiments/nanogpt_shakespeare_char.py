"""nanoGPT's published CPU setting for character-level Shakespeare (karpathy/nanoGPT,
config/train_shakespeare_char.py with the README's CPU overrides), which reports val loss 1.88.

  python scripts/train.py --config=experiments/nanogpt_shakespeare_char.py --workdir=runs/nanogpt_char \
      --config.data.path=PATH/TO/tinyshakespeare/input.txt

As nanoGPT: 4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations, lr 1e-3 warming up over
100 steps and decaying (cosine) to 1e-4 at step 2000, AdamW betas (0.9, 0.99), weight decay 0.1 on
2-D weights (embeddings included, as nanoGPT does), grad clip 1.0, dropout 0, no biases (nanoGPT's
bias=False), the first 90% of the file for training and the last 10% for validation.
Differences: a byte-level tokenizer (identical to characters on this ASCII file, vocab padded to 320
instead of 65), and validation loss over the whole validation split instead of 200 random batches.
"""
from research.config import base_config
from research.models import apply_preset


def get_config():
  c = base_config()
  c.seed = 1337
  c.data.path = ""                     # required: --config.data.path=.../input.txt
  c.data.val_fraction = 0.1
  c.data.tokenizer = "byte"
  c.data.shuffle_rows = 16384          # covers the ~14k training rows: rows in random order, as nanoGPT's
                                       # random windows (a 1024-row window gave val 1.925, no shuffle 1.989)

  apply_preset(c.model, "gpt2-124m")   # GPT-2 architecture, nanoGPT's sizes below
  c.model.vocab_size = 0
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.embed_dim = 128
  c.model.max_seq_len = 64
  c.model.use_bias = False
  c.model.dropout = 0.0

  c.train.num_steps = 2000
  c.train.batch_size = 12
  c.train.seq_len = 64
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.eval_batches = 0             # the whole validation split

  c.optimizer.learning_rate = 1e-3
  c.optimizer.final_learning_rate = 1e-4
  c.optimizer.warmup_steps = 100
  c.optimizer.decay_steps = 2000
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.no_decay = (r"_norm/", r"/bias$")   # nanoGPT decays every 2-D tensor
  c.optimizer.grad_clip_norm = 1.0
  c.mesh.shape = (1, 1, 1)             # batch 12 does not split over 8 devices
  return c
