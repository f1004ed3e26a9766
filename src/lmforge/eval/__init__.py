"""Evaluation: bits per byte on any text, and multiple-choice benchmarks scored by
log-likelihood the way lm-evaluation-harness does."""

from lmforge.eval.bpb import bits_per_byte, read_texts
from lmforge.eval.mcq import Question, evaluate_mcq, read_questions

__all__ = ["Question", "bits_per_byte", "evaluate_mcq", "read_questions", "read_texts"]
