"""Benchmarks (never tests): print one JSON line.

  python scripts/benchmark.py --mode=train --config=experiments/<name>.py [--steps=N] [--config.<key>=...]
      N train steps on synthetic tokens after a warm-up: tokens_per_sec, step_time_ms (median) and its
      spread, mfu, peak_flops, flops_per_token, memory_bytes_per_device.
      Against PyTorch (Hugging Face GPT-2 + torch.optim.AdamW of the same shapes, a test-only
      reference): python tests/pytorch_peer.py --config=... [--pytorch_bf16] [--pytorch_compile].
  python scripts/benchmark.py --mode=lora --config=experiments/<name>.py [--lora_rank=R] [--steps=N]
      a full finetuning step against a LoRA step (rank R, lora.targets; the base frozen) of the same
      model on synthetic tokens: each one's tokens_per_sec, step time, memory_per_device (params,
      optimizer state, compiled total), compiler FLOPs; speedup and memory_ratio (LoRA / full).
  python scripts/benchmark.py --mode=decode --config=experiments/<name>.py | --checkpoint=PATH
      [--batch_sizes=1,8,32] [--prompt_len=128] [--new_tokens=128] [--clients=8] [--compare_pytorch]
      KV-cache decoding (research/perf/decode_bench.py): per batch size prefill tokens/s, decode
      tokens/s and step time, time to first token, KV cache bytes; with --clients=N the HTTP server
      under N concurrent streaming clients (throughput, latency percentiles) beside the offline
      figures; --compare_pytorch: transformers' generate on the same weights, dtype and lengths.
  python scripts/benchmark.py --mode=data --config=experiments/<name>.py [--steps=N]
      the data pipeline alone (read, tokenize, pack/chunk, batch): tokens_per_sec, and the ratio to
      what the train step consumes when --compare_train is set.
  python scripts/benchmark.py --mode=compile --config=experiments/<name>.py --config.model.vocab_size=N
      [--depths=2,12,24] [--repeats=3]
      compile seconds of the train step with model.scan_layers off and on at each depth (default: the
      config's num_layers): the median of --repeats compiles, after one warm-up compile per variant,
      with the persistent compilation cache off (research/perf/compile_bench.py). Nothing runs.
  python scripts/benchmark.py --mode=quality --char_data=PATH/TO/tinyshakespeare/input.txt [--quality_runs=a,b]
      [--seeds=1337,7] [--workdir_root=runs/quality]
      the training results README.md and PERFORMANCE.md quote (research/perf/quality.py), trained from
      step 0: each final eval loss beside its recorded value; exit 1 if one is outside its tolerance.
      Run it before landing a speed change.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research.perf import host_malloc  # noqa: E402

HOST_MALLOC = host_malloc.configure()  # before JAX starts its CPU client: see host_malloc.py

from absl import app, flags, logging  # noqa: E402

from research.config.cli import absl_flags_parser, load_config  # noqa: E402

flags.DEFINE_string("config", None, "Experiment file, optionally with a variant.")
flags.DEFINE_enum("mode", "train", ["train", "lora", "data", "compile", "quality", "decode"], "What to measure.")
flags.DEFINE_string("checkpoint", None, "decode mode: a checkpoint to decode with (default: random weights of --config).")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "decode mode: batch sizes (sequences decoded together).")
flags.DEFINE_integer("prompt_len", 128, "decode mode: prompt tokens per sequence.")
flags.DEFINE_integer("new_tokens", 128, "decode mode: generated tokens per sequence.")
flags.DEFINE_integer("clients", 0, "decode mode: concurrent clients of the HTTP server (0: offline only).")
flags.DEFINE_bool("compare_pytorch", False, "decode mode: also time transformers' generate on the same weights.")
flags.DEFINE_integer("steps", 20, "Measured steps (train) or batches (data).")
flags.DEFINE_integer("warmup", 3, "Steps or batches before measuring.")
flags.DEFINE_integer("lora_rank", 0, "lora mode: the adapters' rank (0: the config's lora.rank, else 16).")
flags.DEFINE_bool("compare_train", False, "data mode: also measure the train step and report the ratio.")
flags.DEFINE_list("depths", [], "compile mode: model.num_layers values to compile (default: the config's).")
flags.DEFINE_integer("repeats", 3, "compile mode: compiles per depth and variant (the median is reported).")
flags.DEFINE_list("quality_runs", None, "quality mode: which runs (default: all of research/perf/quality.py RUNS).")
flags.DEFINE_list("seeds", [], "quality mode: train each run with these seeds (default: the experiment's own).")
flags.DEFINE_string("char_data", "", "quality mode: nanoGPT's tinyshakespeare input.txt (for nanogpt_char).")
flags.DEFINE_string("workdir_root", "runs/quality", "quality mode: each run's workdir goes under here.")
FLAGS = flags.FLAGS
parse_flags, _OVERRIDES = absl_flags_parser(FLAGS)


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  if FLAGS.mode == "quality":
    from research.perf.quality import RUNS, run_quality
    try:
      result = run_quality(FLAGS.quality_runs or list(RUNS), FLAGS.workdir_root, FLAGS.char_data,
                           [int(s) for s in FLAGS.seeds])
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    result.update(time=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result))
    sys.exit(0 if result["all_within_tolerance"] else 1)
  if FLAGS.mode == "decode":
    from research.perf.decode_bench import benchmark_decode
    if not (FLAGS.config or FLAGS.checkpoint):
      print("error: --mode=decode needs --config (random weights of its shape) or --checkpoint", file=sys.stderr)
      sys.exit(1)
    cfg = load_config(FLAGS.config, _OVERRIDES) if FLAGS.config else None
    result = benchmark_decode(cfg, FLAGS.checkpoint, [int(b) for b in FLAGS.batch_sizes], FLAGS.prompt_len,
                              FLAGS.new_tokens, max(1, FLAGS.steps // 10), FLAGS.clients, FLAGS.compare_pytorch)
    result.update(config=FLAGS.config, checkpoint=FLAGS.checkpoint, overrides=_OVERRIDES,
                  time=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result))
    return
  if not FLAGS.config:
    print(f"error: --config is required for --mode={FLAGS.mode}", file=sys.stderr)
    sys.exit(1)
  if FLAGS.mode == "compile":
    import jax
    jax.config.update("jax_enable_compilation_cache", False)  # before the first compile: every one is real
    from research.perf.compile_bench import benchmark_compile
    try:
      result = benchmark_compile(load_config(FLAGS.config, _OVERRIDES), [int(d) for d in FLAGS.depths],
                                 FLAGS.repeats)
    except ValueError as e:  # no vocabulary, a config error (ConfigError is a ValueError)
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    result.update(config=FLAGS.config, overrides=_OVERRIDES, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    print(json.dumps(result))
    return
  from research.perf.benchmark import benchmark_data, benchmark_lora, benchmark_train
  cfg = load_config(FLAGS.config, _OVERRIDES)
  if FLAGS.mode == "train":
    result = benchmark_train(cfg, FLAGS.steps, FLAGS.warmup)
  elif FLAGS.mode == "lora":
    result = benchmark_lora(cfg, FLAGS.steps, FLAGS.warmup, FLAGS.lora_rank or cfg.lora.rank or 16)
  else:
    result = benchmark_data(cfg, FLAGS.steps, FLAGS.warmup)
    if FLAGS.compare_train:
      train = benchmark_train(cfg, max(5, FLAGS.steps // 4), FLAGS.warmup)
      result["train_tokens_per_sec"] = train["tokens_per_sec"]
      result["ratio_to_train_step"] = result["tokens_per_sec"] / train["tokens_per_sec"]
  result.update(config=FLAGS.config, overrides=_OVERRIDES, host_malloc=HOST_MALLOC, time=time.strftime("%Y-%m-%d %H:%M:%S"))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
