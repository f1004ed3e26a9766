"""The ``search_documents`` tool: the assistant's retrieval (``rag.Grounding.retrieve``, with
its no-answer gate) as a tool the model can call with its own query and filters.

Who may read what is never the model's to say. Every search runs with the caller's ``Access``
(user, groups, tenant, and their own filters), fixed when the toolbox is built; the model's
``contract`` filter is added to that access's ``where`` (where the caller already filters on
the contract, the caller's value wins) and its ``document`` filter only drops passages from the
result. Both can narrow what the caller may read, neither can widen it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmforge.agent.toolbox import Result, Tool, tool_spec
from lmforge.rag import Access, Grounding, Retrieved

DESCRIPTION = ("在保险条款等公司文档中检索与问题相关的段落。可按合同名称（contract）或文档编号"
               "（document）缩小范围。")
PROPERTIES = {
    "query": {"type": "string", "minLength": 1, "maxLength": 500,
              "description": "检索用的问题或关键词"},
    "contract": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "只在这份合同中检索（可选）"},
    "document": {"type": "string", "minLength": 1, "maxLength": 200,
                 "description": "只返回这个文档编号的段落（可选）"},
}


def search_tool(grounding: Grounding, access: Access | None, k: int, passage_chars: int
                ) -> Tool:
    """The tool over ``grounding``, searching as ``access`` (None: an operator, who reads
    every document) and returning at most ``k`` passages of ``passage_chars`` characters."""
    caller = access or Access()

    def run(arguments: dict[str, Any]) -> Result:
        narrowed = narrow(caller, arguments.get("contract"))
        document = arguments.get("document")
        # a document filter picks from the whole readable pool, not only the top k
        pool = grounding.index.config.dense_k if document else k
        retrieved = grounding.retrieve(arguments["query"], narrowed, max(pool, k))
        return {"results": results(retrieved, document, k, passage_chars)}

    return Tool(tool_spec("search_documents", DESCRIPTION, PROPERTIES, ["query"]), run)


def narrow(access: Access, contract: str | None) -> Access:
    """``access`` restricted to one contract as well (its own filters kept and winning)."""
    if contract is None:
        return access
    return dataclasses.replace(access, where={"contract": contract, **access.where},
                               groups=list(access.groups), exclude=dict(access.exclude))


def results(retrieved: Retrieved, document: str | None, k: int, passage_chars: int
            ) -> list[dict[str, Any]]:
    """The passages in the tool's result format; none when nothing relevant was found."""
    if not retrieved.relevant:
        return []
    hits = [h for h in retrieved.hits if document is None or h.doc.doc_id == document][:k]
    return [{"n": n, "source": h.doc.meta.get("title") or h.doc.meta.get("contract")
             or h.doc.doc_id, "document": h.doc.doc_id, "text": h.chunk.text[:passage_chars]}
            for n, h in enumerate(hits, 1)]
