"""Answering from retrieved passages: the prompt (numbered passages in a delimited context
block, ``prompts.py``, the same format SFT trained on), the sources returned with the answer, and
the no-answer path: when no passage is relevant enough, the assistant says it does not know
instead of letting the model invent an answer.

Relevance is judged on the best passage's dense cosine similarity to the question and on how
much of the question's IDF-weighted terms it covers: either signal above its threshold counts.
Fusion and reranker scores are rank-based or uncalibrated and cannot gate on their own.

``Grounding.ground`` is the one answer path: ``rag ask``, ``eval qa`` and the server all call it,
so what the evaluation scores is what users get. It retrieves for the conversation's last user
message made stand-alone (a follow-up such as "那它的等待期呢？" carries the product named
earlier, ``rag/followup.py``, and is searched for among that product's documents only),
applies the no-answer gate, and fits the passages into the room the caller leaves for the
prompt (counted in tokens of the model's own chat format); the prompt keeps the user's own
words. Each call first checks (one ``stat``, and a look at the reranker's files) whether the
index folder published a newer generation or reranker; if so the new one is opened once, under
a lock, and swapped in whole, while calls already running finish on the old one. One that
fails to open is logged, the old state kept, and it is not retried until its files change
again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from lmforge.prompts import Passage, neutralise, rag_user_message
from lmforge.rag.access import Access, public_meta
from lmforge.rag.chunk import position_label
from lmforge.rag.followup import Rewriter, RuleRewriter
from lmforge.rag.index import RagIndex
from lmforge.rag.manifest import stamp
from lmforge.rag.rerank import Reranker, model_stamp
from lmforge.rag.retrieve import Hit, Retriever
from lmforge.tokenizer import ChatFormat, Message, encode_chat

log = logging.getLogger(__name__)


@dataclass
class Retrieved:
    hits: list[Hit]
    relevant: bool
    shown: list[str] = field(default_factory=list)  # the passages' texts as the prompt has them

    def sources(self) -> list[dict[str, Any]]:
        """What a client shows under the answer: [n] -> document, chunk, page (the number of
        the pdf page, sheet, slide or chapter its ``position`` names: the document's
        ``positions`` metadata, a page when an older reader wrote none), text, its
        ``location`` as a citation says it, and the document's metadata, less who may read
        it."""
        sources = []
        for n, h in enumerate(self.hits, 1):
            page = h.chunk.page
            kind = None if page is None else h.doc.meta.get("positions", "page")
            sources.append({
                "n": n, "document": h.doc.doc_id, "chunk": h.chunk.index, "page": page,
                "position": kind, "location": position_label(kind, page, h.chunk.heading),
                "heading": h.chunk.heading, "text": h.chunk.text, "score": round(h.score, 4),
                "metadata": public_meta(h.doc.meta)})
        return sources

    def user_message(self, question: str, passages: int | None = None,
                     max_chars: int | None = None) -> str:
        chosen = [Passage(h.chunk.text[:max_chars], h.doc.meta.get("title")
                          or h.doc.meta.get("contract") or h.doc.doc_id)
                  for h in self.hits[:passages]]
        self.shown = [neutralise(p.text) for p in chosen]  # as the prompt writes them
        return rag_user_message(question, chosen)

    def fitted_message(self, question: str, fits: Callable[[str], bool]) -> str | None:
        """The fullest message that fits the model's context: fewer passages first (the best
        ones stay), then shorter ones. Sources stay numbered as in the prompt. None when not
        even 60 characters of the best passage fit."""
        for max_chars in (None, 300, 200, 120, 60):
            for count in range(len(self.hits), 0, -1):
                message = self.user_message(question, count, max_chars)
                if fits(message):
                    self.hits = self.hits[:count]
                    return message
        return None


@dataclass
class GroundedPrompt:
    """A conversation whose last user message carries the retrieved passages, ready to encode,
    or (``answerable`` false) none: nothing relevant was found and the answer is ``NO_ANSWER``."""

    messages: list[Message]
    retrieved: Retrieved
    question: str = ""  # the last user message before the passages were put into it
    query: str = ""  # what retrieval searched for: the question, made stand-alone if needed
    scope: dict[str, str] = field(default_factory=dict)  # the metadata it searched within

    @property
    def answerable(self) -> bool:
        return self.retrieved.relevant

    def sources(self) -> list[dict[str, Any]]:
        return self.retrieved.sources() if self.answerable else []


class State(NamedTuple):
    """What one request is served from, replaced whole in one assignment: the retriever and
    the stamps (manifest, reranker files) of what it was opened from."""

    index_stamp: object
    reranker_stamp: object
    retriever: Retriever


class Grounding:
    """Retrieval for answering: the top passages, and whether any is relevant at all; always
    over the newest generation its index folder has published (and its newest reranker)."""

    def __init__(self, retriever: Retriever, reload_reranker: bool | None = None) -> None:
        # a newer reranker is loaded when this one has (or was opened with) one
        self._reload_reranker = (retriever.reranker is not None if reload_reranker is None
                                 else reload_reranker)
        self._swap = threading.Lock()
        folder = retriever.index.folder
        self._state = State(stamp(folder), self._reranker_stamp(folder), retriever)
        # stamps whose loading failed: retried only once they change again
        self._failed: tuple[object, object] = (None, None)
        self._rules: tuple[RagIndex, RuleRewriter] | None = None  # for the index it knows

    @classmethod
    def open(cls, folder: Path) -> Grounding:
        """The grounding of an index folder, with its trained reranker when it has one."""
        index = RagIndex.open(folder)
        return cls(Retriever(index, Reranker.load(index)), reload_reranker=True)

    @property
    def retriever(self) -> Retriever:
        return self._state.retriever

    @property
    def index(self) -> RagIndex:
        return self.current().index

    def _reranker_stamp(self, folder: Path) -> object:
        return model_stamp(folder) if self._reload_reranker else None

    def _stale(self, state: State, index_now: object, reranker_now: object) -> bool:
        return ((index_now != state.index_stamp and index_now != self._failed[0])
                or (reranker_now != state.reranker_stamp and reranker_now != self._failed[1]))

    def current(self) -> Retriever:
        """The retriever of the newest published generation. A changed manifest (or reranker)
        is opened by one caller while the others wait, so nobody is served a state the index
        has replaced (a revoked document stays revoked). One that cannot be read keeps the old
        state, and is not tried again until it changes."""
        state = self._state  # one read: the stamps and the retriever belong together
        folder = state.retriever.index.folder
        if not self._stale(state, stamp(folder), self._reranker_stamp(folder)):
            return state.retriever
        with self._swap:
            state = self._state
            index_now, reranker_now = stamp(folder), self._reranker_stamp(folder)
            if self._stale(state, index_now, reranker_now):
                self._state = self._refresh(state, index_now, reranker_now)
            return self._state.retriever

    def _refresh(self, state: State, index_now: object, reranker_now: object) -> State:
        """The state for the stamps taken before reading (a write that lands while reading
        changes them again, and is picked up on the next call)."""
        index, reranker = state.retriever.index, state.retriever.reranker
        index_stamp, reranker_stamp = state.index_stamp, state.reranker_stamp
        failed_index, failed_reranker = self._failed
        if index_now != index_stamp and index_now != failed_index:
            try:
                fresh = index.reopen()
                if fresh is not None:
                    fresh.lexical  # noqa: B018  (built before anyone is served from it)
            except Exception:
                log.exception("%s: the new index generation could not be opened; still "
                              "serving generation %d", index.folder, index.generation)
                failed_index = index_now
            else:
                index, index_stamp, failed_index = fresh or index, index_now, None
        if reranker_now != reranker_stamp and reranker_now != failed_reranker:
            try:
                reranker = Reranker.load(index)
            except Exception:
                log.exception("%s: the reranker could not be loaded; keeping the one loaded "
                              "before", index.folder)
                failed_reranker = reranker_now
            else:
                reranker_stamp, failed_reranker = reranker_now, None
        self._failed = (failed_index, failed_reranker)
        if index is state.retriever.index and reranker is state.retriever.reranker:
            return State(index_stamp, reranker_stamp, state.retriever)
        return State(index_stamp, reranker_stamp, Retriever(index, reranker))

    def rules(self) -> RuleRewriter:
        """The rule-based rewriter of the current index's products and glossary, built once
        per index generation."""
        index = self.current().index
        known = self._rules
        if known is None or known[0] is not index:
            known = self._rules = (index, RuleRewriter.for_index(index))
        return known[1]

    def standalone(self, history: Sequence[Message], question: str,
                   rewrite: Rewriter | None = None) -> str:
        """What to retrieve for ``question`` after ``history``: ``rewrite``'s stand-alone
        question, by default the rules' when the conversation has earlier user turns (one
        without needs none); an empty rewrite is the question itself."""
        if rewrite is None:
            if not any(m.get("role") == "user" for m in history):
                return question
            rewrite = self.rules()
        return rewrite(list(history), question).strip() or question

    def ground(self, messages: Sequence[Message], chat: ChatFormat, room: int,
               access: Access | None = None, k: int | None = None,
               rewrite: Rewriter | None = None) -> GroundedPrompt:
        """Retrieve for the last user message (made stand-alone, ``standalone``, within the
        ``scope`` its rewrite names) and put the passages into it, trimmed so the encoded
        prompt takes at most ``room`` tokens (the context minus the answer's budget)."""
        conversation = [dict(m) for m in messages]
        at = next((i for i in range(len(conversation) - 1, -1, -1)
                   if conversation[i]["role"] == "user"), None)
        if at is None:
            raise ValueError("grounding needs a user message to answer")
        last = conversation[at]
        question = last["content"]
        query = self.standalone(messages[:at], question, rewrite)
        scope = self.scope(query, question, access)
        retrieved = self.retrieve(query, access, k, scope)
        if retrieved.relevant:
            def fits(message: str) -> bool:
                last["content"] = message
                return len(encode_chat(chat, conversation, add_generation_prompt=True)) <= room

            fitted = retrieved.fitted_message(question, fits)
            if fitted is None:  # no passage fits beside the conversation: nothing to answer from
                log.warning("no retrieved passage fits in %d prompt tokens; answering that "
                            "nothing relevant was found", room)
                retrieved.relevant, retrieved.hits, retrieved.shown = False, [], []
            last["content"] = fitted or question
        return GroundedPrompt(conversation, retrieved, question, query, scope)

    def scope(self, query: str, question: str, access: Access | None = None
              ) -> dict[str, str]:
        """The documents a rewritten follow-up is about: those of the product its rewrite
        names (a follow-up's question words are the same in every contract, and a product's
        name is in its documents' metadata, seldom in their text). Empty for a question
        asked as it stands, or when the caller already filters on that field."""
        if query == question:
            return {}
        scope = self.rules().scope(query)
        if access is not None and any(f in access.where for f in scope):
            return {}
        return scope

    def retrieve(self, question: str, access: Access | None = None, k: int | None = None,
                 scope: dict[str, str] | None = None) -> Retrieved:
        """The top ``k`` passages for ``question`` (with ``scope``: see ``ranked``)."""
        retriever = self.current()  # one snapshot for the whole call
        k = k or retriever.index.config.top_k
        pool, relevant = self.ranked(question, access, k, scope, retriever)
        return Retrieved(pool[:k], relevant)

    def ranked(self, question: str, access: Access | None, k: int,
               scope: dict[str, str] | None = None, retriever: Retriever | None = None
               ) -> tuple[list[Hit], bool]:
        """The whole final ranking ``retrieve`` cuts, and whether it is relevant. With a
        ``scope``, only among the documents whose metadata matches it, with no way back to
        the others: another product's clause is no answer about this one (clauses are copied
        across contracts nearly word for word), so when the product has nothing relevant the
        answer is that nothing was found. What is searched for there leaves the product's
        name out (``RuleRewriter.search_text``): every document in the scope carries it in
        its metadata, and the words of a name seldom in the text only pull the ranking
        towards other clauses."""
        retriever = retriever or self.current()
        if scope:
            access = replace(access or Access(),
                             where={**(access.where if access else {}), **scope})
            for name in scope.values():
                question = self.rules().search_text(question, name)
        pool = retriever.search(question, access, "final")
        return pool, self.is_relevant(question, pool, k, retriever, access)

    def is_relevant(self, question: str, pool: Sequence[Hit], k: int,
                    retriever: Retriever | None = None, access: Access | None = None) -> bool:
        """The pool is what this user may read (a hidden document must not even reveal that an
        answer exists); it holds the dense retriever's whole list, so its best cosine is the
        best readable chunk's. Term weights are the reader's tenant's (``lexical_for``), so
        another tenant's documents do not change whether a question counts as answerable."""
        if not pool:
            return False
        index = (retriever or self.retriever).index
        best_dense = max(h.features.get("dense", 0.0) for h in pool)
        lexical = index.lexical_for(access)
        terms = set(lexical.analyzer(question))
        coverage = max(lexical.coverage(terms, lexical.present(terms, h.chunk.searchable))[0]
                       for h in pool[:k])
        return (best_dense >= index.config.min_dense_score
                or coverage >= index.config.min_keyword_coverage)
