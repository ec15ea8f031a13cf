"""Inference: KV-cache decoding over slots (decoder.py), per-row sampling (sampling.py), continuous
batching (engine.py), beam search (beam.py), text in/out (generate.py, text_stream.py), and a
classifier's predictions (classify.py)."""
