"""Grain pipelines: packing honoured by the model, per-process shares, exact resume, eval, mixtures."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.data.rows import token_rows
from research.data import build_pipeline
from research.models import DecoderLM, preset_config
from tests.conftest import write_corpus


def _pipeline(cfg, **data):
  cfg.data.update(data)
  return build_pipeline(cfg.data, token_rows(cfg.data.packing), log=lambda *a: None)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_packed_batches(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing="pack")
  (batch,) = _take(iter(p.train_dataset(8, 128, seed=0)), 1)
  assert set(batch) == {"inputs", "targets", "weights", "positions", "segment_ids"}
  assert all(v.shape == (8, 128) for v in batch.values())
  seg, pos, w = batch["segment_ids"], batch["positions"], batch["weights"]
  np.testing.assert_array_equal(w, (seg > 0).astype(np.float32))
  assert seg.max() > 1  # several documents per row
  for r in range(8):  # positions restart at 0 at every document start
    starts = np.flatnonzero(np.diff(seg[r], prepend=-1) != 0)
    assert all(pos[r, s] == 0 for s in starts if seg[r, s] > 0)
  # a document's last target is EOS, unless it is a row-long piece of a longer document
  eos = p.tokenizer.eos_id
  for r in range(8):
    for s in set(seg[r][seg[r] > 0].tolist()):
      idx = np.flatnonzero(seg[r] == s)
      assert batch["targets"][r, idx[-1]] == eos or len(idx) == 128


def test_packed_row_gives_per_document_logits(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing="pack")
  it = iter(p.train_dataset(8, 64, seed=0))
  batch = next(b for b in (next(it) for _ in range(20)) if b["segment_ids"].max() > 1)
  r = int(np.argmax(batch["segment_ids"].max(axis=1)))  # a row holding several documents
  model = DecoderLM(preset_config("llama-tiny", vocab_size=320), rngs=nnx.Rngs(0))
  row = {k: jnp.asarray(v[r:r + 1]) for k, v in batch.items()}
  packed = np.asarray(model(row["inputs"], positions=row["positions"], segment_ids=row["segment_ids"]))
  seg = batch["segment_ids"][r]
  for s in set(seg[seg > 0].tolist()):
    idx = np.flatnonzero(seg == s)
    alone = np.asarray(model(jnp.asarray(batch["inputs"][r:r + 1, idx])))
    np.testing.assert_allclose(packed[0, idx], alone[0], atol=1e-5)


def test_chunked_batches_are_full_rows(tiny_cfg):
  p = _pipeline(tiny_cfg, packing="chunk")
  (batch,) = _take(iter(p.train_dataset(8, 32, seed=0)), 1)
  assert set(batch) == {"inputs", "targets", "weights"}
  assert batch["weights"].min() == 1.0
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


@pytest.mark.parametrize("packing", ["pack", "chunk"])
def test_global_batch_does_not_depend_on_the_process_count(tiny_cfg, packing):
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing=packing)
  one = _take(iter(p.train_dataset(8, 32, seed=0, num_streams=4)), 3)
  for nproc in (2, 4):
    shares = [_take(iter(p.train_dataset(8, 32, seed=0, num_streams=4, process_index=i, process_count=nproc)), 3)
              for i in range(nproc)]
    assert shares[0][0]["inputs"].shape == (8 // nproc, 32)
    joined = [{k: np.concatenate([s[b][k] for s in shares]) for k in one[b]} for b in range(3)]
    _same(joined, one)
  assert not np.array_equal(one[0]["inputs"][:2], one[0]["inputs"][2:4])  # streams read different documents
  with pytest.raises(ValueError, match="data.streams must divide"):
    p.train_dataset(8, 32, seed=0, num_streams=3, process_count=1)


def test_stream_states_move_between_process_counts(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines")
  uninterrupted = _take(iter(p.train_dataset(8, 32, seed=0, num_streams=2)), 6)
  shares = [iter(p.train_dataset(8, 32, seed=0, num_streams=2, process_index=i, process_count=2)) for i in (0, 1)]
  for it in shares:
    _take(it, 4)
  merged = {"streams": {**shares[0].get_state()["streams"], **shares[1].get_state()["streams"]}}
  resumed = iter(p.train_dataset(8, 32, seed=0, num_streams=2))
  resumed.set_state(json.loads(json.dumps(merged)))
  _same(_take(resumed, 2), uninterrupted[4:])


@pytest.mark.parametrize("packing", ["pack", "chunk"])
def test_resume_gives_exactly_the_next_batches(tiny_cfg, tmp_path, packing):
  other = tmp_path / "other"
  write_corpus(str(other), num_files=3, seed=1)
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing=packing,
                mixture=((tiny_cfg.data.path, 0.7), (str(other), 0.3)), val_files=("play_[23].txt",))
  uninterrupted = _take(iter(p.train_dataset(8, 32, seed=5)), 12)
  it = iter(p.train_dataset(8, 32, seed=5))
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # small and JSON-serialisable
  assert len(json.dumps(state)) < 4096
  resumed = iter(p.train_dataset(8, 32, seed=5))
  resumed.set_state(state)
  _same(_take(resumed, 5), uninterrupted[7:])
  _same(_take(iter(p.train_dataset(8, 32, seed=5)), 3), uninterrupted[:3])  # same seed, same batches
  assert not np.array_equal(_take(iter(p.train_dataset(8, 32, seed=6)), 1)[0]["inputs"],
                            uninterrupted[0]["inputs"])


def test_resume_with_worker_processes(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing="chunk", num_workers=2)
  reference = _take(iter(_pipeline(tiny_cfg, num_workers=0).train_dataset(8, 32, seed=1)), 6)
  it = iter(p.train_dataset(8, 32, seed=1))
  first = _take(it, 3)
  state = it.get_state()
  it.close()
  resumed = iter(p.train_dataset(8, 32, seed=1))
  resumed.set_state(state)
  rest = _take(resumed, 3)
  resumed.close()
  _same(first + rest, reference)  # workers change nothing but speed


def test_eval_batches_are_fixed(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines")
  a = p.eval_batches(8, 32, max_batches=0)
  b = p.eval_batches(8, 32, max_batches=0)
  _same(a, b)
  assert len(p.eval_batches(8, 32, max_batches=2)) == 2
  halves = [p.eval_batches(8, 32, 0, process_index=i, process_count=2) for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([halves[0][0]["inputs"], halves[1][0]["inputs"]]), a[0]["inputs"])


def test_mixture_follows_weights(tmp_path, tiny_cfg):
  for name, letter in (("a", "a"), ("b", "b")):
    (tmp_path / name).mkdir()
    for i in range(4):
      (tmp_path / name / f"{i}.txt").write_text("\n\n".join(letter * (5 + j % 7) for j in range(50)))
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing="pack", val_fraction=0.2, val_files=(),
                mixture=((str(tmp_path / "a"), 3.0), (str(tmp_path / "b"), 1.0)))
  tokens = np.concatenate([b["inputs"][b["weights"] > 0] for b in _take(iter(p.train_dataset(8, 32, seed=0)), 10)])
  share_a = (tokens == ord("a")).sum() / ((tokens == ord("a")).sum() + (tokens == ord("b")).sum())
  assert 0.65 < share_a < 0.85


def test_rows_of_one_long_document_come_in_a_seeded_random_order(tiny_cfg, tmp_path):
  """A one-file corpus (nanoGPT's input.txt) is one document far longer than a row: without the row
  shuffle its rows came in file order, every batch adjacent text."""
  lines = "".join(f"line {i:05d} of the only document\n" for i in range(3000))
  (tmp_path / "one").mkdir()
  (tmp_path / "one" / "input.txt").write_text(lines)
  text = lines.encode()

  def starts(shuffle_rows, seed, n=6):
    p = _pipeline(tiny_cfg, path=str(tmp_path / "one"), val_files=(), val_fraction=0.1, doc_split="file",
                  packing="chunk", shuffle_rows=shuffle_rows)
    rows = np.concatenate([b["inputs"] for b in _take(iter(p.train_dataset(8, 32, seed=seed)), n)])
    return [text.find(bytes(r.astype(np.uint8))) for r in rows]

  in_order = starts(0, seed=0)
  assert in_order == sorted(in_order)  # what documents-only shuffling gave
  shuffled = starts(4096, seed=0)
  assert min(shuffled) >= 0 and shuffled != sorted(shuffled)
  assert max(shuffled) - min(shuffled) > len(text) // 2  # the 48 rows come from all over the file
  assert starts(4096, seed=0) == shuffled and starts(4096, seed=1) != shuffled  # seeded


def test_resume_inside_a_shuffle_window_is_exact(tiny_cfg):
  p = _pipeline(tiny_cfg, doc_split="blank_lines", packing="pack", shuffle_rows=24)
  uninterrupted = _take(iter(p.train_dataset(8, 32, seed=3)), 10)
  it = iter(p.train_dataset(8, 32, seed=3))
  _take(it, 4)  # 32 rows: inside the second window of 24
  state = json.loads(json.dumps(it.get_state()))
  assert len(json.dumps(state)) < 4096
  resumed = iter(p.train_dataset(8, 32, seed=3))
  resumed.set_state(state)
  _same(_take(resumed, 6), uninterrupted[4:])
