"""What a resume refuses: changed data-stream settings, model settings, tokenizer or data (the
end-to-end refusals through train() are in test_checkpoint.py)."""
import re

import pytest

from research.checkpoint import CheckpointError
from research.checkpoint.data_state import check_same_stream
from research.checkpoint.resume_checks import check_resumable, check_same_data, check_same_model
from research.config import base_config


def _pair(**changes):
  saved, now = base_config(), base_config()
  for key, value in changes.items():
    section, name = key.split(".")
    now[section][name] = value
  return saved.to_dict(), now.to_dict()


@pytest.mark.parametrize("key, value", [
    ("data.path", "other/*.txt"), ("data.spm_model_file", "x.model"), ("data.bpe_vocab_file", "v.json"),
    ("data.bpe_merges_file", "m.txt"), ("data.tiktoken_file", "t.tiktoken"), ("data.tiktoken_pattern", "gpt2"),
    ("data.spm_max_documents", 10), ("data.skip_bad_records", True), ("data.tfds_data_dir", "/data/tfds"),
])
def test_stream_keys_cover_every_file_and_setting_that_shapes_the_batches(key, value):
  saved, now = _pair(**{key: value})
  expected = rf"data settings changed .*{key}: checkpoint .* vs now {re.escape(repr(value))}"
  with pytest.raises(CheckpointError, match=expected):
    check_same_stream(saved, now)


@pytest.mark.parametrize("key, value", [("model.param_dtype", "bfloat16"), ("model.mlp_activation", "relu"),
                                        ("model.norm_eps", 1e-6), ("model.rope_theta", 500000.0),
                                        ("model.dtype", "bfloat16"), ("model.dropout", 0.1)])
def test_changed_model_settings_are_refused_naming_both_values(key, value):
  saved, now = _pair(**{key: value})
  default = base_config()[key.split(".")[0]][key.split(".")[1]]
  message = str(pytest.raises(CheckpointError, check_same_model, saved, now).value)
  assert f"{key}: checkpoint {default!r} vs now {value!r}" in message and "\n" not in message


def test_settings_that_leave_the_results_alone_may_change():
  saved, now = _pair(**{"model.remat": "full", "model.attention_impl": "cudnn", "model.vocab_multiple": 128,
                        "train.loss_chunks": 4, "train.microbatches": 2, "train.nonfinite": "skip",
                        "train.num_steps": 5000})
  changed = check_resumable({"config": saved}, now, "byte-v1", ["fp"])  # an older checkpoint: no fingerprints
  assert "train.num_steps: checkpoint 1000 vs now 5000" in changed and len(changed) == 4


def test_microbatches_are_refused_when_dropout_draws_masks_per_microbatch():
  saved, now = _pair(**{"model.dropout": 0.1, "train.microbatches": 2})
  saved["model"]["dropout"] = 0.1
  with pytest.raises(CheckpointError, match=r"train.microbatches: checkpoint 1 vs now 2"):
    check_same_model(saved, now)


def test_a_key_the_checkpoint_predates_is_not_compared():
  saved, now = _pair(**{"model.norm_eps": 1e-6})
  del saved["model"]["norm_eps"]
  check_same_model(saved, now)


def test_tokenizer_and_data_fingerprints():
  meta = {"tokenizer": "spm-aaaa", "data_sources": ["fp1"]}
  check_same_data(meta, "spm-aaaa", ["fp1"])
  check_same_data({}, "spm-bbbb", ["fp2"])  # written before the fingerprints were saved
  with pytest.raises(CheckpointError, match=r"tokenizer changed .*\(checkpoint spm-aaaa vs now spm-bbbb\)"):
    check_same_data(meta, "spm-bbbb", ["fp1"])
  with pytest.raises(CheckpointError, match=r"data changed .*checkpoint \['fp1'\] vs now \['fp2'\]"):
    check_same_data(meta, "spm-aaaa", ["fp2"])


def test_a_checkpoint_older_than_the_row_shuffle_resumes_with_it_off():
  saved = base_config().to_dict()
  del saved["data"]["shuffle_rows"]  # written before the key existed: rows were not shuffled
  now = base_config()
  now.data.shuffle_rows = 0
  check_same_stream(saved, now.to_dict())
  now.data.shuffle_rows = 1024
  with pytest.raises(CheckpointError, match="data.shuffle_rows: checkpoint 0 vs now 1024"):
    check_same_stream(saved, now.to_dict())
