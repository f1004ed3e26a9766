"""Moderation of what goes in and out of the served assistant: blocked topics and terms
(``[serve.moderation]``), and PII redaction of answers with the data pipeline's own rules,
the same for a whole answer and a streamed one."""

from lmforge.guard.moderator import Moderator, OutputFilter, Screened, Verdict
from lmforge.guard.phrases import TERM

__all__ = ["TERM", "Moderator", "OutputFilter", "Screened", "Verdict"]
