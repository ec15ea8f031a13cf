"""Export a checkpoint's parameters to safetensors, with the config beside it as JSON.

  python scripts/export.py --checkpoint=WORKDIR_OR_STEP_DIR --out=model.safetensors [--dtype=bfloat16]

A LoRA run's checkpoint exports merged: its base with the adapters folded into the kernels, and the
config with lora.rank=0 (the adapters alone, for PEFT: scripts/convert_hf.py --to_hf --adapter_only).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A workdir (its newest checkpoint), a checkpoints/ dir or a step dir.")
flags.DEFINE_string("out", None, "The .safetensors file to write (the suffix is added when missing); the config "
                    "goes to the same name with .json.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Dtype of the written tensors.")
flags.mark_flags_as_required(["checkpoint", "out"])
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  from research.checkpoint import CheckpointError
  from research.checkpoint.loading import export_paths, export_safetensors
  try:
    export_paths(FLAGS.out)
  except ValueError as e:
    print(f"error: --out={e}", file=sys.stderr)
    sys.exit(1)
  try:
    tensors, config = export_safetensors(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {tensors} and {config}")


if __name__ == "__main__":
  app.run(main)
