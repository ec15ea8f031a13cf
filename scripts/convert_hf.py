"""Hugging Face models in and out (GPT-2, Llama 2/3/3.1+, Mistral, Qwen2, Gemma; float32 or bfloat16).

  python scripts/convert_hf.py --hf_dir=DIR --out=OUT
      DIR: config.json + model.safetensors (or shards with model.safetensors.index.json) and the
      tokenizer files; OUT: a checkpoint directory (research.load_model(OUT), finetune.init_from=OUT)
  python scripts/convert_hf.py --to_hf --checkpoint=PATH --out=DIR [--max_shard_size=5GB]
      PATH: a workdir, checkpoints/ dir or step dir; DIR: config.json, safetensors, tokenizer files,
      loadable with transformers' from_pretrained(DIR). A LoRA run's checkpoint exports merged (its
      base plus the adapters folded into the kernels).
  python scripts/convert_hf.py --to_hf --adapter_only --checkpoint=PATH --out=DIR [--base_model_name_or_path=B]
      a LoRA run's adapters alone, as PEFT saves them (adapter_config.json, adapter_model.safetensors):
      PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(B), DIR); B defaults to the
      Hugging Face directory the base was imported from (else export the base with --to_hf and name it)

Nothing is unpickled: a directory with only pytorch_model.bin is refused. Every refusal is one line.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("hf_dir", None, "Import: the Hugging Face model directory to read.")
flags.DEFINE_string("out", None, "Import: the checkpoint directory to write. Export: the HF directory to write.")
flags.DEFINE_bool("to_hf", False, "Export --checkpoint to a Hugging Face directory instead of importing.")
flags.DEFINE_string("checkpoint", None, "Export: a workdir (its newest checkpoint), a checkpoints/ dir or a step dir.")
flags.DEFINE_string("max_shard_size", "5GB", "Export: shard the safetensors past this size (bytes, or 500MB, 5GB, 2GiB).")
flags.DEFINE_bool("adapter_only", False, "Export (--to_hf) of a LoRA run: its adapters alone, in PEFT's format.")
flags.DEFINE_string("base_model_name_or_path", None, "--adapter_only: adapter_config.json's base model (default: "
                    "the Hugging Face directory the base was imported from).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                  "Import: the stored parameters' dtype (default float32). Export: the written tensors' dtype "
                  "(default: the checkpoint's model.param_dtype).")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  from research.checkpoint import CheckpointError
  from research.hf import HFConvertError
  try:
    if FLAGS.to_hf:
      if not FLAGS.checkpoint or FLAGS.hf_dir:
        raise HFConvertError("--to_hf exports --checkpoint=PATH to --out=DIR (no --hf_dir)")
      if FLAGS.adapter_only:
        from research.hf.peft_export import export_peft
        written = export_peft(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype, FLAGS.base_model_name_or_path)
      else:
        from research.hf.export_hf import export_hf
        written = export_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.max_shard_size, FLAGS.dtype)
      print(f"wrote {FLAGS.out}: {', '.join(written)}")
    else:
      if FLAGS.adapter_only or FLAGS.base_model_name_or_path:
        raise HFConvertError("--adapter_only and --base_model_name_or_path go with --to_hf (an export)")
      if not FLAGS.hf_dir or FLAGS.checkpoint:
        raise HFConvertError("give --hf_dir=DIR --out=OUT to import, or --to_hf --checkpoint=PATH --out=DIR to export")
      from research.hf.import_hf import import_hf
      cfg = import_hf(FLAGS.hf_dir, FLAGS.out, FLAGS.dtype or "float32")
      from research.models import count_params
      print(f"wrote {FLAGS.out}: {cfg.model.family}, {count_params(cfg.model):,} parameters "
            f"({cfg.model.param_dtype}); research.load_model({FLAGS.out!r}) loads it")
  except (HFConvertError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
