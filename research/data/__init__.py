"""Corpora in, token batches out.

Owns: finding and reading local text files (with a train/validation split), tokenizers (byte-level,
SentencePiece trained on the corpus and cached), token streams cached on disk, and the batch
samplers the trainer consumes. Must not import models or training code.
"""
from research.data.corpus import Corpus, load_corpus
from research.data.pipeline import DataPipeline, build_pipeline
from research.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = ["Corpus", "load_corpus", "DataPipeline", "build_pipeline", "ByteTokenizer",
           "SentencePieceTokenizer", "Tokenizer"]
