"""transformers' `generate` timed the way research/perf/decode_bench.py times our decoder: the
test-only PyTorch reference of `scripts/benchmark.py --mode=decode --compare_pytorch` (which runs
this file in its own process on a Hugging Face export of the same weights).

  python tests/pytorch_decode_peer.py --hf_dir=DIR --batch_sizes=1,8,32 --prompt_len=128 --new_tokens=128
      [--repeats=3] [--dtype=float32|bfloat16]

Per batch size: prefill = generate(max_new_tokens=1); decode tokens/s = B * (new_tokens - 1) / (the
full generate's time - prefill's); time to first token = one prompt's generate(max_new_tokens=1)
(as ours: one request, whatever the batch size). Greedy, KV cache on,
min_new_tokens = max_new_tokens (no early EOS), random prompt ids. Prints one JSON line.
"""
import argparse
import json
import time

import numpy as np
import torch
import transformers


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--hf_dir", required=True)
  parser.add_argument("--batch_sizes", default="1,8,32")
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=dtype).to(device).eval()
  vocab = model.config.vocab_size
  rng = np.random.default_rng(0)
  out = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
         "threads": torch.get_num_threads()}

  def timed(ids, n):
    def run():
      with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
      if device == "cuda":
        torch.cuda.synchronize()
    run()
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
    return float(np.median(times))

  for b in (int(x) for x in args.batch_sizes.split(",")):
    ids = torch.from_numpy(rng.integers(0, vocab, (b, args.prompt_len))).to(device)
    prefill = timed(ids, 1)
    full = timed(ids, args.new_tokens)
    first = prefill if b == 1 else timed(ids[:1], 1)
    out[str(b)] = {"prefill_tokens_per_sec": b * args.prompt_len / prefill, "prefill_ms": 1000 * prefill,
                   "decode_tokens_per_sec": b * (args.new_tokens - 1) / max(full - prefill, 1e-9),
                   "decode_step_ms": 1000 * (full - prefill) / max(args.new_tokens - 1, 1),
                   "time_to_first_token_ms": 1000 * first}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
