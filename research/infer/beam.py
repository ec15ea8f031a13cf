"""Beam search on a SlotDecoder: each prompt's `num_beams` beams in consecutive slots.

At each step every beam's 2 * num_beams best next tokens are candidates (log-probabilities under
the repetition penalty); per prompt the best 2 * num_beams of beam score + candidate are taken in
order: one ending in an end token (among the first num_beams) becomes a finished hypothesis, the
others continue until num_beams beams are chosen, and the cache rows follow their beams. A
hypothesis scores sum(log p of its generated tokens, the end token included) / (its generated
length ** length_penalty). A prompt is done once it has num_beams hypotheses and its best running
beam, scored at the current length, cannot beat the worst of them (transformers' rule with
early_stopping=False), or, with early_stopping, as soon as it has num_beams. Beams still running at
the length limit are added as they are. num_beams = 1 is greedy decoding.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from research.infer.decoder import SlotDecoder
from research.infer.sampling import RowSampling


@dataclasses.dataclass
class Hypothesis:
  token_ids: list[int]
  score: float
  logprobs: list[float]
  finish_reason: str     # "stop" (an end token) or "length"


def beam_search(decoder: SlotDecoder, prompts: Sequence[Sequence[int]], *, num_beams: int, max_new_tokens: int,
                end_ids: Sequence[int], length_penalty: float = 1.0, num_return_sequences: int = 1,
                repetition_penalty: float = 1.0, max_length: int | None = None,
                early_stopping: bool = False) -> list[list[Hypothesis]]:
  """Each prompt's best num_return_sequences hypotheses, best first."""
  nb, b = int(num_beams), len(prompts)
  if not 1 <= num_return_sequences <= nb:
    raise ValueError(f"num_return_sequences={num_return_sequences} must be in 1..num_beams={nb}")
  if b * nb > decoder.num_slots:
    raise ValueError(f"{b} prompts x {nb} beams need {b * nb} slots; the decoder has {decoder.num_slots}")
  limit = min(decoder.max_len, max_length or decoder.max_len)
  end = set(int(t) for t in end_ids)
  s = decoder.num_slots
  _start(decoder, prompts, nb)
  beams = [[[] for _ in range(nb)] for _ in range(b)]          # generated ids per beam
  beam_lps = [[[] for _ in range(nb)] for _ in range(b)]
  scores = np.full((b, nb), -np.inf)
  scores[:, 0] = 0.0
  hyps: list[list[Hypothesis]] = [[] for _ in range(b)]
  done = [len(p) >= limit or max_new_tokens == 0 for p in prompts]
  tokens, positions = np.zeros(s, np.int32), np.zeros(s, np.int32)
  for i, p in enumerate(prompts):
    tokens[i * nb:(i + 1) * nb], positions[i * nb:(i + 1) * nb] = p[-1], len(p) - 1
  penalty = np.full(s, repetition_penalty, np.float32)
  for t in range(max_new_tokens):
    if all(done):
      break
    cand_lp, cand_ids = (np.asarray(a) for a in decoder.beam_step(tokens, positions, penalty, 2 * nb))
    source = np.arange(s, dtype=np.int32)
    for i in range(b):
      if done[i]:
        continue
      rows = slice(i * nb, (i + 1) * nb)
      total = (scores[i][:, None] + cand_lp[rows]).reshape(-1)
      order = np.argsort(-total, kind="stable")[:2 * nb]
      chosen = []
      for rank, flat in enumerate(order):
        beam, k = divmod(int(flat), 2 * nb)
        token, lp = int(cand_ids[rows][beam, k]), float(cand_lp[rows][beam, k])
        if not np.isfinite(total[flat]):
          break
        if token in end:
          if rank < nb:
            _add(hyps[i], nb, Hypothesis(beams[i][beam] + [token], float(total[flat]) / (t + 1) ** length_penalty,
                                         beam_lps[i][beam] + [lp], "stop"))
          continue
        chosen.append((beam, token, lp, float(total[flat]), rank))
        if len(chosen) == nb:
          break
      new_beams = [beams[i][c[0]] + [c[1]] for c in chosen]
      new_lps = [beam_lps[i][c[0]] + [c[2]] for c in chosen]
      for j, (beam, token, _, score, _) in enumerate(chosen):
        source[i * nb + j] = i * nb + beam
        tokens[i * nb + j] = token
        scores[i, j] = score
      scores[i, len(chosen):] = -np.inf
      beams[i], beam_lps[i] = new_beams + [[]] * (nb - len(chosen)), new_lps + [[]] * (nb - len(chosen))
      positions[rows] += 1
      at_limit = len(prompts[i]) + t + 1 >= limit or t + 1 == max_new_tokens
      if len(hyps[i]) >= nb and (early_stopping or not chosen or
                                 hyps[i][-1].score >= max(c[3] for c in chosen) / (t + 1) ** length_penalty):
        done[i] = True
      elif at_limit or not chosen:
        for j in (j for j, c in enumerate(chosen) if c[4] < nb):   # as transformers: the first nb ranks
          _add(hyps[i], nb, Hypothesis(beams[i][j], scores[i, j] / (t + 1) ** length_penalty, beam_lps[i][j], "length"))
        done[i] = True
    decoder.reorder(source)
  return [h[:num_return_sequences] for h in hyps]


def _start(decoder: SlotDecoder, prompts, nb: int) -> None:
  """Every prompt but its last token into its first beam's slot, then copied to its other beams."""
  long = [i for i, p in enumerate(prompts) if len(p) > 1]
  short = [i * nb for i, p in enumerate(prompts) if len(p) == 1]
  if long:
    decoder.prefill([i * nb for i in long], [list(prompts[i][:-1]) for i in long], RowSampling.greedy(len(long)),
                    False)
  if short:
    decoder.forget(short)
  rows = np.arange(decoder.num_slots, dtype=np.int32)
  rows[:len(prompts) * nb] = np.repeat(np.arange(len(prompts)) * nb, nb)
  decoder.reorder(rows)


def _add(hyps: list[Hypothesis], nb: int, hyp: Hypothesis) -> None:
  """Keeps the nb best, best first."""
  hyps.append(hyp)
  hyps.sort(key=lambda h: -h.score)
  del hyps[nb:]
