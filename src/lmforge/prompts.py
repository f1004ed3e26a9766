"""Prompt formats shared by training and answering, so the model is trained on exactly the
prompts it is later asked with: the retrieval context block and the no-answer reply (the
assistant's system prompt is the ``[assistant]`` config section).

Retrieved text is placed inside ``<context>`` ... ``</context>`` as numbered passages; any
delimiter inside a passage is neutralised so a document can never close the block and speak as
the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CONTEXT_OPEN, CONTEXT_CLOSE = "<context>", "</context>"
RAG_INSTRUCTION = ("请只根据<context>中的资料回答问题，并在用到的资料后用[编号]标注出处；"
                   "资料中没有答案时，直接说不知道。")
NO_ANSWER = "抱歉，根据现有资料，我不知道这个问题的答案。"


@dataclass
class Passage:
    text: str
    source: str = ""  # e.g. the contract or document name


def neutralise(text: str) -> str:
    """A zero-width space inside any delimiter, so passage text cannot open or close the block."""
    return text.replace(CONTEXT_OPEN, "<\u200bcontext>").replace(CONTEXT_CLOSE, "</\u200bcontext>")


def format_context(passages: Sequence[Passage]) -> str:
    lines = [CONTEXT_OPEN]
    for i, p in enumerate(passages, 1):
        source = f"（{neutralise(p.source)}）" if p.source else ""
        lines.append(f"[{i}]{source} {neutralise(p.text)}")
    lines.append(CONTEXT_CLOSE)
    return "\n".join(lines)


def rag_user_message(question: str, passages: Sequence[Passage]) -> str:
    return f"{RAG_INSTRUCTION}\n{format_context(passages)}\n问题：{question}"

