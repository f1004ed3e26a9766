"""Evaluation: bits per byte on any text, multiple-choice benchmarks scored by log-likelihood the
way lm-evaluation-harness does (and cross-checked against it), and generative domain QA with and
without RAG beside a retrieval-only baseline, with a check of what each answer cites."""

from lmforge.eval.bpb import Reframing, bits_per_byte, bits_per_byte_by_source, read_texts
from lmforge.eval.decoding import choose_grounding, describe
from lmforge.eval.harness import harness_mcq
from lmforge.eval.mcq import LETTERS, Question, evaluate_mcq, read_questions, render
from lmforge.eval.qa import QAItem, answer_grounded, evaluate_qa, read_qa
from lmforge.rag import CITATION_THRESHOLD, CheckedSentence, check_answer, citation_summary

__all__ = ["CITATION_THRESHOLD", "LETTERS", "CheckedSentence", "QAItem", "Question", "Reframing",
           "answer_grounded", "bits_per_byte", "bits_per_byte_by_source", "check_answer",
           "choose_grounding", "citation_summary", "describe", "evaluate_mcq", "evaluate_qa",
           "harness_mcq", "read_qa", "read_questions", "read_texts", "render"]
