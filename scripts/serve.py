"""An OpenAI-compatible server for a checkpoint: /v1/completions, /v1/chat/completions (SSE
streaming), /v1/models, /health, and the tokenizer endpoints lm-evaluation-harness reads.

  python scripts/serve.py --checkpoint=WORKDIR_OR_STEP_DIR --port=8000 [--host=127.0.0.1] \
      [--model_name=NAME] [--num_slots=8] [--max_queue=64] [--request_timeout_s=60] [--chat_template=auto]

Requests from all clients share one running decode (continuous batching, --num_slots rows); at most
--max_queue wait for a slot, more are answered 503.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("checkpoint", None, "A workdir (its newest step), checkpoints/ dir or step dir.")
flags.DEFINE_integer("port", None, "The port to listen on.", lower_bound=1, upper_bound=65535)
flags.DEFINE_string("host", "127.0.0.1", "The address to listen on (0.0.0.0: every interface).")
flags.DEFINE_string("model_name", None, "The model name clients send (default: the checkpoint's workdir name).")
flags.DEFINE_integer("num_slots", 8, "Requests decoded together (rows of the running batch).", lower_bound=1)
flags.DEFINE_integer("max_queue", 64, "Requests waiting for a slot; more are answered 503.", lower_bound=1)
flags.DEFINE_float("request_timeout_s", 60.0, "A request's time limit, waiting included; at it the request "
                   "ends with finish_reason 'timeout'.", lower_bound=0.001)
flags.DEFINE_string("chat_template", "auto", "auto (the tokenizer's own, else the run's built-in sft.template) "
                    "or a built-in: chatml, llama3, plain.")
flags.mark_flags_as_required(["checkpoint", "port"])
FLAGS = flags.FLAGS


def main(_):
  logging.set_verbosity(logging.ERROR)
  from research.plan.targets import quiet_libtpu_without_tpu
  quiet_libtpu_without_tpu()  # libtpu installed for planning, no TPU here: no start-up noise
  from research.checkpoint import CheckpointError
  from research.data.corpus import DataError
  from research.serve.launch import build_served, run
  try:
    served = build_served(FLAGS.checkpoint, model_name=FLAGS.model_name, num_slots=FLAGS.num_slots,
                          max_queue=FLAGS.max_queue, request_timeout_s=FLAGS.request_timeout_s,
                          chat_template=FLAGS.chat_template)
  except (CheckpointError, DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  run(served, FLAGS.host, FLAGS.port)


if __name__ == "__main__":
  app.run(main)
