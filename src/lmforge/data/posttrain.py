"""Post-training examples from a recipe's sections: chat files, the identity file and domain QA
become conversations (SFT) or preference pairs (DPO, the reward model; also the users'
corrections from the feedback store), with counts and rejected records for the stage's report.
Domain QA on held-out contracts is never used.

A chat file may hold tool-use conversations (``data/chat.py`` reads them); those are led by the
assistant's system prompt unless they bring their own, as the agent will be run with it beside
the same tools, so the model learns to call them in the setting it is served in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmforge.config import AssistantConfig, PreferenceConfig, SFTConfig
from lmforge.data.chat import Conversation, PreferencePair, load_conversations, load_preferences
from lmforge.data.domain_qa import load_qa, preference_pairs, sft_conversations
from lmforge.data.feedback import load_feedback
from lmforge.tokenizer import with_system


def sft_examples(config: SFTConfig, assistant: AssistantConfig, heldout_contracts: set[str],
                 seed: int) -> tuple[list[Conversation], dict[str, Any]]:
    names = {"name": assistant.name, "author": assistant.owner}
    conversations: list[Conversation] = []
    stats: dict[str, Any] = {"sources": {}, "problems": []}
    files = [*config.chat_files, *([config.identity_file] if config.identity_file else [])]
    for path in files:
        loaded = load_conversations(Path(path), names)
        for conversation in loaded.items:
            if conversation.tools:
                conversation.messages = with_system(assistant.system, conversation.messages)
        conversations += loaded.items
        stats["sources"][path] = len(loaded.items)
        stats["problems"] += loaded.problems
        if tool_use := sum(bool(c.tools) for c in loaded.items):
            stats.setdefault("tool_use", {})[path] = tool_use
    if config.qa_queries:
        items, passages = load_qa(Path(config.qa_queries), Path(config.qa_passages),
                                  heldout_contracts)
        domain = sft_conversations(items, passages, assistant.system, config.rag_distractors,
                                   config.rag_passage_chars, seed, config.rag_answer)
        conversations += domain
        stats["sources"][config.qa_queries] = len(domain)
        stats["heldout_contracts"] = len(heldout_contracts)
    return conversations, stats


def preference_examples(config: PreferenceConfig, sft: SFTConfig, assistant: AssistantConfig,
                        heldout_contracts: set[str], seed: int
                        ) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Pairs from ``config.pair_files``, plus domain pairs from SFT's QA files when
    ``config.qa_pairs``, plus the users' corrections in ``config.feedback_files`` (the
    correction chosen over the answer it corrects)."""
    pairs: list[PreferencePair] = []
    stats: dict[str, Any] = {"sources": {}, "problems": []}
    for path in config.pair_files:
        loaded = load_preferences(Path(path))
        pairs += loaded.items
        stats["sources"][path] = len(loaded.items)
        stats["problems"] += loaded.problems
    if config.qa_pairs and sft.qa_queries:
        items, passages = load_qa(Path(sft.qa_queries), Path(sft.qa_passages), heldout_contracts)
        domain = preference_pairs(items, passages, assistant.system, sft.rag_distractors,
                                  sft.rag_passage_chars, seed, sft.rag_answer)
        pairs += domain
        stats["sources"][sft.qa_queries] = len(domain)
    if config.feedback_files:
        feedback = load_feedback([Path(p) for p in config.feedback_files])
        pairs += feedback.pairs
        stats["sources"] |= {path: feedback.pairs_by_file[path] for path in feedback.stats["files"]}
        stats["feedback"] = feedback.stats
    return pairs, stats
