"""The RL stages (``lmforge ppo``, ``lmforge grpo``): what train/rl.py leaves to its caller.

Rollouts come from the inference engine, the one that serves (continuous batching, the same
sampler, the chat format's stop ids), with the policy's weights used as they are: unfused, so
training goes on with them. Rewards the domain can verify are scored here, because they need
eval's and rag's reading of an answer:
- ``mcq``: exam questions (FinEval layout); 1 when the first option letter the answer names is
  the right one, else 0; with ``letters_only`` every answer, sampled and held-out, is one option
  letter (the engine's structured outputs), for a model that has not learnt to answer with one;
- ``grounded``: a domain question after its gold passage among distractors (the RAG prompt
  SFT trains on); 1 when the answer cites the gold passage, minus ``unsupported_penalty`` per
  sentence the cited passages do not support (rag/citations.py, the server's own check);
- ``model``: the reward model the ``rm`` stage trained (PPO), on the SFT domain questions or
  ``prompt_files`` (``{"messages": [...]}`` or ``{"prompt": "..."}`` per line).
Prompts split by question into training and held-out (``val_fraction``, the project's seeded
split): the held-out ones are scored greedily at each evaluation and never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import AssistantConfig, RecipeConfig, RLConfig, SamplingConfig, SFTConfig
from lmforge.data import QA, heldout_contracts, load_qa, rag_question
from lmforge.eval import LETTERS, Question, read_questions, render
from lmforge.infer import Engine, Grammar, compile_choice, first_tokens, stopping
from lmforge.model import Transformer
from lmforge.pipeline.layout import RunLayout
from lmforge.rag import check_answer
from lmforge.splits import held_out
from lmforge.tokenizer import ChatFormat, Message, encode_chat, load_chat_format
from lmforge.train import Method, RLPrompts, Rollout, Score, reinforce

MCQ_INSTRUCTION = "\n请只回答正确选项的字母。"
_LETTER = re.compile(f"[{LETTERS}]")


def engine_rollout(chat: ChatFormat, config: RLConfig, grammar: Grammar | None = None
                   ) -> Rollout:
    """Each prompt's sampled (or greedy) response ids from one batched engine run, ending in
    the stop id when the answer stopped; each prompt draws with its own seed, under
    ``grammar`` when given (structured outputs: one of the option letters)."""
    sampling = stopping(chat, SamplingConfig(max_new_tokens=config.max_new_tokens,
                                             temperature=config.temperature, top_p=config.top_p))

    def rollout(policy: Transformer, prompts: list[list[int]], seeds: list[int],
                greedy: bool) -> list[list[int]]:
        engine = Engine(policy, chat.tokenizer, max_batch=len(prompts),
                        max_len=max(map(len, prompts)) + config.max_new_tokens, fuse=False)
        for n, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            drawn = dataclasses.replace(sampling, seed=seed,
                                        temperature=0.0 if greedy else sampling.temperature)
            engine.submit(prompt, drawn, str(n), grammar=grammar)
        responses: list[list[int]] = [[] for _ in prompts]
        for event in engine.run():
            if event.token is not None:
                responses[int(event.request)].append(event.token)
        return responses

    return rollout


@dataclass
class Prompted:
    """The conversations RL samples answers to, and for each what a verifiable reward needs."""

    conversations: list[list[Message]]
    keys: list[str]  # what the held-out split goes by (the question)
    gold: list[Any]  # the right letter's index, or (the passages shown, the gold's number)
    options: str = ""  # mcq: the letters an answer may be (as many as the most choices)


def mcq_prompts(files: Sequence[str], system: str) -> Prompted:
    questions: list[Question] = [q for f in files for q in read_questions(Path(f))]
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    return Prompted([[*head, {"role": "user", "content": render(q, False) + MCQ_INSTRUCTION}]
                     for q in questions], [q.question for q in questions],
                    [q.answer for q in questions],
                    LETTERS[:max((len(q.choices) for q in questions), default=0)])


def grounded_prompts(sft: SFTConfig, system: str, exclude: set[str], seed: int) -> Prompted:
    items, by_pid = load_qa(Path(sft.qa_queries), Path(sft.qa_passages), exclude)
    rng = random.Random(seed)
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    conversations, gold = [], []
    for item in items:
        user, _, shown, number = rag_question(item, by_pid, sft.rag_distractors,
                                              sft.rag_passage_chars, rng)
        conversations.append([*head, {"role": "user", "content": user}])
        gold.append(([p.text for p in shown], number))
    return Prompted(conversations, [item.question for item in items], gold)


def plain_prompts(files: Sequence[str], items: Sequence[QA], system: str) -> Prompted:
    """Prompts for the reward model to judge: ``prompt_files`` lines, else domain questions."""
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    conversations: list[list[Message]] = []
    for f in files:
        for lineno, line in enumerate(Path(f).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "messages" in record:
                conversations.append(record["messages"])
            elif "prompt" in record:
                conversations.append([*head, {"role": "user", "content": str(record["prompt"])}])
            else:
                raise ValueError(f"{f}:{lineno}: expected \"messages\" or \"prompt\"")
    if not files:
        conversations = [[*head, {"role": "user", "content": i.question}] for i in items]
    keys = [json.dumps(c, ensure_ascii=False) for c in conversations]
    return Prompted(conversations, keys, [None] * len(conversations))


def mcq_reward(text: str, answer: int) -> float:
    found = _LETTER.search(text)
    return float(found is not None and found.group() == LETTERS[answer])


def grounded_reward(text: str, passages: list[str], gold: int, penalty: float) -> float:
    checked = check_answer(text, passages)
    cited = any(gold in c.cites for c in checked)
    unsupported = sum(not c.supported for c in checked)
    return float(cited) - penalty * unsupported


def verifiable_score(config: RLConfig, chat: ChatFormat, prompted: Prompted) -> Score:
    """Decode each answer and score it against its prompt's gold (``mcq``, ``grounded``)."""
    def score(rows: list[int], responses: list[list[int]]) -> list[float]:
        out = []
        for row, response in zip(rows, responses, strict=True):
            text = chat.tokenizer.decode([t for t in response if t not in chat.stop_ids])
            gold = prompted.gold[row]
            out.append(mcq_reward(text, gold) if config.reward == "mcq" else
                       grounded_reward(text, gold[0], gold[1], config.unsupported_penalty))
        return out

    return score


def encode_prompts(chat: ChatFormat, prompted: Prompted, config: RLConfig, max_len: int,
                   seed: int) -> tuple[RLPrompts, dict[str, Any]]:
    """Chat-encoded prompts that leave room for ``max_new_tokens``, split by question."""
    room = max_len - config.max_new_tokens
    ids = [encode_chat(chat, c, add_generation_prompt=True) for c in prompted.conversations]
    kept = [n for n, i in enumerate(ids) if len(i) <= room]
    if not kept:
        raise ValueError(f"no RL prompt fits train.seq_len - max_new_tokens ({room} tokens)")
    val = [n for n in kept if held_out(prompted.keys[n], config.val_fraction, seed, "rl")]
    train = [n for n in kept if n not in set(val)]
    if not train or not val:
        raise ValueError(f"{len(kept)} RL prompts are too few for a train/held-out split "
                         f"(val_fraction {config.val_fraction})")
    return RLPrompts(ids, train, val), {"prompts": {"train": len(train), "val": len(val)},
                                        "dropped_too_long": len(ids) - len(kept)}


def rl_stage(method: Method) -> Callable[..., dict[str, Any]]:
    """The body of ``lmforge ppo`` / ``lmforge grpo``."""
    def body(config: RLConfig, sft: SFTConfig, assistant: AssistantConfig, corpus: Path,
             base: Path, reward_model: Path, out: Path, seed: int, resume: bool = False
             ) -> dict[str, Any]:
        chat = load_chat_format(base)
        exclude = heldout_contracts(corpus) if corpus.exists() else set()
        if config.reward == "mcq":
            if not config.prompt_files:
                raise ValueError(f"{method}.prompt_files: list the exam questions to train on "
                                 '(FinEval csv/jsonl), e.g. ["data/eval/fineval/val"]')
            prompted = mcq_prompts(question_files(config.prompt_files), assistant.system)
        elif config.reward == "grounded":
            prompted = grounded_prompts(sft, assistant.system, exclude, seed)
        else:
            items = [] if config.prompt_files else load_qa(
                Path(sft.qa_queries), Path(sft.qa_passages), exclude)[0]
            prompted = plain_prompts(config.prompt_files, items, assistant.system)
        max_len = config.train.seq_len
        prompts, stats = encode_prompts(chat, prompted, config, max_len, seed)
        score = None if config.reward == "model" else verifiable_score(config, chat, prompted)
        grammar = compile_choice(chat.tokenizer, list(prompted.options)) \
            if config.letters_only else None
        report = reinforce(method, config, prompts, engine_rollout(chat, config, grammar),
                           score, base, out, seed,
                           reward_model if config.reward == "model" else None,
                           {"reward": config.reward, **stats}, resume,
                           allowed=letter_ids(grammar) if grammar else None)
        if not report:
            return {}
        final = report["final"]
        return {"headline": f"{report['steps']} updates on {stats['prompts']['train']} prompts; "
                            f"held-out reward {report['before'].get('val_reward', 0):.3f} -> "
                            f"{final.get('val_reward', 0):.3f}, KL {final.get('val_kl', 0):.3f}",
                "outputs": {"model": str(out / "model"), "report": str(out / "report.md"),
                            "curves": str(out / report["curves"])}}

    return body


def letter_ids(grammar: Grammar) -> list[int]:
    """The tokens a letters-only answer can be: what its policy is normalised over. A letter
    the tokenizer can only spell in several tokens would make answers longer than one token,
    whose later tokens no such set describes: refused."""
    allowed = first_tokens(grammar)
    if not all(_completes(grammar, i) for i in allowed):
        raise ValueError("letters_only: some option letter takes more than one token in this "
                         "tokenizer; answers cannot be constrained to one letter token")
    return allowed


def _completes(grammar: Grammar, token: int) -> bool:
    matcher = grammar.start()
    return matcher.accept(token) and matcher.complete


def question_files(paths: Sequence[str]) -> list[str]:
    """Files, with folders expanded to the csv / jsonl files inside."""
    out: list[str] = []
    for p in map(Path, paths):
        out += sorted(str(f) for f in p.iterdir() if f.suffix in (".csv", ".jsonl")) \
            if p.is_dir() else [str(p)]
    return out


def rl_args(section: str) -> Callable[[RecipeConfig, RunLayout], dict[str, Any]]:
    def args(r: RecipeConfig, layout: RunLayout) -> dict[str, Any]:
        config: RLConfig = getattr(r, section)
        return {"config": config, "sft": r.sft, "assistant": r.assistant,
                "corpus": layout.corpus,
                "base": Path(config.train.init_from) if config.train.init_from
                else layout.trained, "reward_model": layout.model("rm"),
                "out": layout.stage(section), "seed": r.run.seed}

    return args
