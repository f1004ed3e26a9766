"""Each user's memory, in the manner of MemGPT: a few core facts always in view, and an archive
searched on demand.

Core memory is a small JSON file per user (``core/<hash>.json``, written atomically), capped
at ``max_facts`` facts of ``max_fact_chars`` characters; the agent's system prompt shows it, so
the model never has to look up the user's name or policy. When it is full, the oldest fact
moves to the archive instead of being lost.

Archival memory (notes the model saves, and each finished conversation) lives in a real vector
store: one ``lmforge.rag.RagIndex`` in the memory folder, shared by all users, each memory a
document whose metadata gives it a tenant of its own user's (``memory:["<tenant>", "<user>"]``)
and ``acl = <user>``. It is only ever
searched with that user's ``Access``, so the index's own access control (decided from its
manifest, before the top k are taken) keeps one user's memories from another, as it keeps one
company's documents from another's. One lock per folder serialises the index's readers and
writers inside a process; two processes writing one memory folder at once are not supported.
"""

from __future__ import annotations

import hashlib
import json
import threading
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from lmforge.agent.toolbox import Result, Tool, ToolError, tool_spec
from lmforge.atomic import atomic_write_text
from lmforge.config import RagConfig
from lmforge.rag import Access, Hit, RagIndex, Retriever
from lmforge.tokenizer import Message

CORE, ARCHIVE = "core", "archive"
MAX_NOTE_CHARS = 4000
MAX_CONVERSATION_CHARS = 20_000  # the end of a longer conversation is what is archived
MEMORY_TOOLS = ("remember_fact", "save_note", "search_memory")
Owner = tuple[str | None, str]  # (tenant, user)


@dataclass
class Memory:
    """One archived memory as ``RagIndex.add`` reads a document (the fields of
    ``lmforge.data.Document``, which the agent package does not import)."""

    text: str
    source: str
    doc_id: str
    meta: dict[str, str] = field(default_factory=dict)


class MemoryStore:
    """A memory folder: every user's core facts and the one archive. Thread-safe."""

    def __init__(self, folder: Path, max_facts: int = 20, max_fact_chars: int = 200,
                 embedder: Any = None) -> None:
        """``embedder``: the archive's (a ``rag`` embedder; None: the index default, e5)."""
        self.folder = Path(folder)
        self.max_facts, self.max_fact_chars = max_facts, max_fact_chars
        self._embedder = embedder
        self.lock = threading.Lock()  # the archive index's and the core files' readers and writers
        self._index: RagIndex | None = None

    def user(self, name: str, tenant: str | None = None) -> UserMemory:
        """The memory of user ``name`` (of ``tenant``, when users are per tenant: the same
        name in two tenants is two people)."""
        if not name.strip() or "," in name:
            raise ValueError(f"memory user {name!r}: expected a non-empty name without commas")
        return UserMemory(self, name, tenant)

    # ---- core facts ---------------------------------------------------------------------
    def _core_path(self, owner: Owner) -> Path:
        digest = hashlib.sha256(owner_key(owner).encode()).hexdigest()[:32]
        return self.folder / CORE / f"{digest}.json"

    def read_facts(self, owner: Owner) -> list[str]:
        path = self._core_path(owner)
        if not path.exists():
            return []
        try:
            facts = json.loads(path.read_text(encoding="utf-8"))["facts"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a core memory file ({err})") from None
        return [str(f) for f in facts]

    def write_facts(self, owner: Owner, facts: list[str]) -> None:
        tenant, user = owner
        atomic_write_text(self._core_path(owner), json.dumps(
            {"tenant": tenant, "user": user, "facts": facts}, ensure_ascii=False,
            indent=1) + "\n")

    # ---- the archive --------------------------------------------------------------------
    def _archive(self) -> RagIndex:
        """The archive's newest state (another process may have added to it)."""
        if self._index is None:
            self._index = RagIndex.create(self.folder / ARCHIVE, RagConfig(), self._embedder)
        elif self._index.generation:  # published before: pick up a newer generation
            self._index = self._index.reopen() or self._index
        return self._index

    def add(self, memory: Memory) -> None:
        with self.lock:
            index = self._archive()
            index.add(cast(Any, [memory]), progress=False)
            index.save()

    def search(self, query: str, access: Access, k: int) -> list[Hit]:
        with self.lock:
            index = self._archive()
            if not index.chunks:
                return []
            return Retriever(index).search(query, access, "hybrid", k)


class UserMemory:
    """What one user's agent may remember and recall; it can reach no other user's memory."""

    def __init__(self, store: MemoryStore, user: str, tenant: str | None = None) -> None:
        self.store, self.user = store, user
        self.owner: Owner = (tenant, user)
        # the archive's access: this user of their own memory tenant, and nothing else
        self.tenant = f"memory:{owner_key(self.owner)}"
        self.access = Access(user=user, tenant=self.tenant)

    def facts(self) -> list[str]:
        with self.store.lock:
            return self.store.read_facts(self.owner)

    def remember(self, fact: str) -> list[str]:
        """Keep ``fact`` in core memory; returns the oldest facts moved to the archive to make
        room (a fact already known is not added twice)."""
        fact = " ".join(fact.split())
        if not fact:
            raise ToolError("the fact is empty")
        if len(fact) > self.store.max_fact_chars:
            raise ToolError(f"a core fact is at most {self.store.max_fact_chars} characters "
                            f"(this one has {len(fact)}); save longer text with save_note")
        with self.store.lock:
            facts = self.store.read_facts(self.owner)
            if _folded(fact) not in {_folded(f) for f in facts}:
                facts.append(fact)
            moved = facts[:max(0, len(facts) - self.store.max_facts)]
            self.store.write_facts(self.owner, facts[len(moved):])
        for old in moved:
            self.save(old, "fact")
        return moved

    def save(self, text: str, kind: str = "note") -> str:
        """Archive ``text`` (a note, a fact moved out of core memory, a conversation);
        returns its id."""
        text = text.strip()
        if not text:
            raise ToolError("the note is empty")
        if len(text) > MAX_NOTE_CHARS and kind != "conversation":
            raise ToolError(f"a note is at most {MAX_NOTE_CHARS} characters (this one has "
                            f"{len(text)})")
        doc_id = f"{kind}-{uuid.uuid4().hex[:16]}"
        self.store.add(Memory(text, "memory", doc_id, {
            "tenant": self.tenant, "acl": self.user, "kind": kind,
            "time": datetime.now(UTC).isoformat(timespec="seconds")}))
        return doc_id

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """This user's archived memories closest to ``query``, best first."""
        hits = self.store.search(query, self.access, k)
        return [{"n": n, "kind": h.doc.meta.get("kind", "note"), "time": h.doc.meta.get("time"),
                 "text": h.chunk.text} for n, h in enumerate(hits, 1)]

    def archive_conversation(self, messages: Sequence[Message]) -> str | None:
        """Archive what the user and the assistant said in ``messages`` (not the system
        prompt or tool traffic); returns its id, or None when nothing was said."""
        lines = [f"{m['role']}: {m['content']}" for m in messages
                 if m["role"] in ("user", "assistant") and m.get("content")]
        text = "\n".join(lines)[-MAX_CONVERSATION_CHARS:]
        return self.save(text, "conversation") if text.strip() else None

    def system_block(self) -> str:
        """Core memory as the system prompt shows it ("" when there is none)."""
        facts = self.facts()
        if not facts:
            return ""
        return "关于这位用户，你记得（核心记忆）：\n" + "\n".join(f"- {f}" for f in facts)


def memory_tools(memory: UserMemory, k: int) -> dict[str, Tool]:
    """``remember_fact`` (core), ``save_note`` and ``search_memory`` (archival) of one user."""

    def remember(arguments: dict[str, Any]) -> Result:
        moved = memory.remember(arguments["fact"])
        return {"saved": True, "moved_to_archive": moved} if moved else {"saved": True}

    def save_note(arguments: dict[str, Any]) -> Result:
        return {"saved": memory.save(arguments["text"])}

    def search(arguments: dict[str, Any]) -> Result:
        return {"results": memory.search(arguments["query"], k)}

    def text(most: int, description: str) -> dict[str, Any]:
        return {"type": "string", "minLength": 1, "maxLength": most, "description": description}

    return {
        "remember_fact": Tool(tool_spec(
            "remember_fact",
            "记住关于用户的一条简短事实（如姓名、年龄、已购产品），以后每次对话都能看到。",
            {"fact": text(memory.store.max_fact_chars, "要记住的事实")}, ["fact"]), remember),
        "save_note": Tool(tool_spec(
            "save_note", "把较长的笔记存入长期记忆，以后可用 search_memory 检索。",
            {"text": text(MAX_NOTE_CHARS, "笔记内容")}, ["text"]), save_note),
        "search_memory": Tool(tool_spec(
            "search_memory", "检索与该用户过去的对话和笔记。",
            {"query": text(500, "要找的内容")}, ["query"]), search),
    }


def owner_key(owner: Owner) -> str:
    """One string per (tenant, user), never the same for two (``a/b`` and ``a``'s ``b``)."""
    return json.dumps([owner[0] or "", owner[1]], ensure_ascii=False)


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()
