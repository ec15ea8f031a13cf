"""Training rows as the model sees them, with the tokens that train marked (prepare_data.py
--show_examples): what a user reads to check that the prompt is not trained and each reply is.

Each example of a row (its segment; the whole row without segment ids) is decoded with its special
tokens written out ("<eos>", "<|im_end|>"); a token that trains, as a target, is between [[ and ]]
(on a terminal: green instead). The first token of an example is never a target.
"""
from __future__ import annotations

import numpy as np

GREEN, RESET = "\033[32m", "\033[0m"


def special_names(tokenizer) -> dict[int, str]:
  """id -> the text shown for a special token: a Hugging Face tokenizer's own, else <bos>/<eos>/<pad>."""
  names = {tokenizer.pad_id: "<pad>", tokenizer.bos_id: "<bos>", tokenizer.eos_id: "<eos>"}
  names.update({i: text for text, i in (getattr(tokenizer, "special_token_ids", None) or {}).items()})
  return names


def _pieces(tokenizer, ids: list[int], trained: list[bool], names: dict[int, str]) -> list[tuple[str, bool]]:
  """(text, trains) pieces: runs of ordinary ids are decoded whole and cut where training starts or
  stops (so a SentencePiece word keeps its space), special ids are their names."""
  pieces, i = [], 0
  while i < len(ids):
    if ids[i] in names:
      pieces.append((names[ids[i]], trained[i]))
      i += 1
      continue
    j = i
    while j < len(ids) and ids[j] not in names:
      j += 1
    cuts = [i] + [k for k in range(i + 1, j) if trained[k] != trained[k - 1]] + [j]
    done = ""
    for a, b in zip(cuts, cuts[1:]):
      text = tokenizer.decode(ids[i:b])
      pieces.append((text[len(done):] if text.startswith(done) else tokenizer.decode(ids[a:b]), trained[a]))
      done = text
    i = j
  return pieces


def format_example(tokenizer, ids: list[int], trained: list[bool], color: bool = False) -> str:
  out = []
  for text, trains in _pieces(tokenizer, ids, trained, special_names(tokenizer)):
    if trains and out and out[-1][1]:
      out[-1] = (out[-1][0] + text, True)
    else:
      out.append((text, trains))
  opened, closed = (GREEN, RESET) if color else ("[[", "]]")
  return "".join(f"{opened}{text}{closed}" if trains else text for text, trains in out)


def format_row(tokenizer, row: dict, index: int = 0, color: bool = False) -> str:
  """One row: a line of counts, then each example's text, indented."""
  length = len(row["inputs"])
  segments = row["segment_ids"] if "segment_ids" in row else np.ones(length, np.int32)
  ids_of = [s for s in dict.fromkeys(segments.tolist()) if s > 0]
  weights = np.asarray(row["weights"])
  lines = [f"row {index}: {len(ids_of)} example(s), {int((segments > 0).sum())} of {length} positions used, "
           f"{int((weights > 0).sum())} trained tokens"]
  for k, s in enumerate(ids_of, 1):
    at = np.flatnonzero(segments == s)
    ids = [int(row["inputs"][at[0]])] + [int(t) for t in row["targets"][at]]
    trained = [False] + [bool(w > 0) for w in weights[at]]
    text = format_example(tokenizer, ids, trained, color)
    lines.append(f"  example {k}: {len(ids)} tokens, {sum(trained)} trained")
    lines += ["    " + line for line in text.split("\n")]
  return "\n".join(lines)


def show_rows(data, cfg, count: int, color: bool = False) -> str:
  """The first `count` training rows of the run's data stream (stream 0 of the first batches)."""
  t = cfg.train
  streams = cfg.data.streams or 1
  rows, batches = [], iter(data.train_dataset(t.batch_size, t.seq_len, cfg.seed, streams))
  try:
    while len(rows) < count:
      batch = next(batches)
      rows += [{k: v[r] for k, v in batch.items()} for r in range(len(batch["inputs"]))]
  finally:
    batches.close()
  return "\n".join(format_row(data.tokenizer, row, i + 1, color) for i, row in enumerate(rows[:count]))
