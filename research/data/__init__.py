"""Corpora in, token batches out.

Owns: local corpora (read strictly, split, built once into array_record by a TFDS builder), TFDS
sources, tokenizers (byte-level, SentencePiece trained on the corpus and cached), and the Grain
pipelines that pack or chunk documents into per-process batches, deterministic and resumable.
Must not import models or training code.
"""
from research.data.corpus import DataError
from research.data.pipeline import DataPipeline, build_pipeline
from research.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = ["DataError", "DataPipeline", "build_pipeline", "ByteTokenizer", "SentencePieceTokenizer", "Tokenizer"]
