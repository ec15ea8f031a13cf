"""Inference: sampling text from a trained model (sample.py) and a classifier's predictions
(classify.py). (KV-cache decoding and beam search come later.)"""
from research.infer.sample import sample_text

__all__ = ["sample_text"]
