"""Compositions of stages: ``lmforge run`` (every stage of a recipe with fingerprints, skip and
resume, and the report card), the run's layout, and the jobs that need more than one stage's
packages (training the RAG reranker needs the index and the training loop); ``cli`` calls these.
"""

from lmforge.pipeline.checkpoints import consolidate_checkpoint
from lmforge.pipeline.evaluate import QA_FIGURES
from lmforge.pipeline.layout import RunLayout
from lmforge.pipeline.report import write_report_card
from lmforge.pipeline.retrieval import train_retrieval
from lmforge.pipeline.run import Stage, StageResult, run_alone, run_recipe
from lmforge.pipeline.stages import BY_NAME, STAGES, print_summary

__all__ = ["BY_NAME", "QA_FIGURES", "STAGES", "RunLayout", "Stage", "StageResult",
           "consolidate_checkpoint", "print_summary",
           "run_alone", "run_recipe", "train_retrieval", "write_report_card"]
