"""A follow-up question made stand-alone by the assistant model itself, for retrieval.

The rules of ``rag/followup.py`` resolve the references they know (a product named earlier, a
glossary term, 它/这款产品/那…呢); a model can resolve what no rule lists. It is asked once,
greedily and with a short budget, to rewrite the last question given the last turns, and its
answer is used only when it looks like a rewrite: not empty, not much longer than the question
plus what a reference can stand for, and keeping most of the question's own characters (a
small model tends to answer instead, or to drop the question for the previous one). Anything
else goes to ``fallback``, the rule-based rewriter in practice; it is a parameter because
infer does not import rag (``docs/architecture.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from lmforge.config import SamplingConfig
from lmforge.infer.generate import complete
from lmforge.model import Transformer
from lmforge.text import scored_chars
from lmforge.tokenizer import ChatFormat, Message, encode_chat, with_system

RewriteFn = Callable[[list[Message], str], str]  # rag.Rewriter's shape
INSTRUCTION = ("把对话中最后的问题改写成不依赖上文、可以单独用来检索的问题：把“它”“这款产品”等"
               "指代换成所指的产品或术语，补全省略的部分。不要回答问题，不要添加新的条件，"
               "只输出改写后的问题。")
LABELS = ("改写后的问题：", "改写后的问题:", "改写：", "改写:", "问题：", "问题:", "Rewritten:",
          "Question:")
QUOTES = "\"'“”‘’「」 "


def rewrite_request(history: Sequence[Message], question: str, turns: int,
                    max_chars: int) -> str:
    """The user message asking for the rewrite: the last ``turns`` user turns and the replies
    between them (each cut to ``max_chars``), then the question."""
    users = [i for i, m in enumerate(history) if m.get("role") == "user"]
    start = users[-turns] if len(users) >= turns else 0
    said = {"user": "用户", "assistant": "助手"}
    lines = [f"{said[m['role']]}：{str(m['content'])[:max_chars]}" for m in history[start:]
             if m.get("role") in said]
    return "\n".join([INSTRUCTION, "", "对话：", *lines, "", f"最后的问题：{question}",
                      "改写后的问题："])


def clean_rewrite(text: str) -> str:
    """The model's first non-empty line, without a label or surrounding quotes."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    for label in LABELS:
        line = line.removeprefix(label).strip()
    return line.strip(QUOTES)


def keeps_question(rewrite: str, question: str, extra_chars: int, min_kept: float) -> bool:
    """Not empty, at most ``extra_chars`` longer than the question, and holding at least
    ``min_kept`` of the question's content characters (counted with repeats)."""
    if not rewrite or len(rewrite) > len(question) + extra_chars:
        return False
    asked = Counter(scored_chars(question))
    if not asked:
        return True
    kept = sum((asked & Counter(scored_chars(rewrite))).values())
    return kept / sum(asked.values()) >= min_kept


def model_rewriter(model: Transformer, chat: ChatFormat, fallback: RewriteFn, *,
                   needs: Callable[[list[Message], str], bool] | None = None,
                   system: str = "", turns: int = 3, max_new_tokens: int = 64,
                   extra_chars: int = 80, min_kept: float = 0.5, max_chars: int = 400
                   ) -> RewriteFn:
    """A ``rag.Rewriter`` that asks ``model`` (greedy, ``max_new_tokens``, one line) and falls
    back to ``fallback`` when the answer is no usable rewrite or the request does not fit the
    model's context. ``needs`` (e.g. ``RuleRewriter.dependent``) keeps a stand-alone question
    as it is without asking; without it, every question after a user turn is sent."""
    if max_new_tokens < 1 or turns < 1:
        raise ValueError(f"max_new_tokens and turns: expected at least 1, got {max_new_tokens} "
                         f"and {turns}")
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])

    def rewrite(history: list[Message], question: str) -> str:
        if not any(m.get("role") == "user" for m in history):
            return question
        if needs is not None and not needs(history, question):
            return question
        request = with_system(system, [{"role": "user", "content": rewrite_request(
            history, question, turns, max_chars)}])
        prompt = encode_chat(chat, request, add_generation_prompt=True)
        if len(prompt) + max_new_tokens > model.config.max_seq_len:
            return fallback(history, question)
        said = clean_rewrite(complete(model, chat, [prompt], config)[0])
        if keeps_question(said, question, extra_chars, min_kept):
            return said
        return fallback(history, question)

    return rewrite
