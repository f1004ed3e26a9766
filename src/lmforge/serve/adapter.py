"""The serving adapter: from a validated request to the engine and back (vLLM's
``serving_chat``/``serving_completion``). It applies the assistant's defaults (the system
prompt and sampling SFT and evaluation used), grounds RAG questions through the one answer
path (``Grounding.ground``) and decodes their answers as the model folder's grounding settings say
(``infer.grounded``, as eval and ``rag ask`` do), sizes the token budget, starts the engine's
streams and collects or streams their events as OpenAI bodies; a RAG answer carries its sources
and the citation check of its sentences. Beam search, embeddings and retrieval run in worker
threads, beside the engine, each counted against ``max_waiting`` with the engine's requests.
Each chat answer is remembered (``answers.py``), so its user can rate it (``/v1/feedback``).
A conversation the model's chat template refuses (roles out of the order it takes, an answer it
would rewrite) is the client's to fix: a 400 that says what the template refused.
No HTTP routing here: ``routes.py`` only hands requests in.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from tokenizers import Tokenizer

from lmforge.config import AssistantConfig, GroundingConfig, SamplingConfig, ServeConfig
from lmforge.guard import Moderator, Verdict
from lmforge.infer import Evidence, beam_search, decode_whole, evidence_prompt, stopping
from lmforge.model import Transformer
from lmforge.prompts import NO_ANSWER
from lmforge.rag import GroundedPrompt, Grounding
from lmforge.serve import agentic, limits, tools
from lmforge.serve.agentic import AgentService
from lmforge.serve.answers import Answers
from lmforge.serve.audit import current
from lmforge.serve.keys import Principal, access
from lmforge.serve.metrics import Metrics
from lmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FeedbackRequest,
    RagOptions,
    SamplingFields,
    envelope,
    new_id,
    usage,
)
from lmforge.serve.runner import EngineRunner, QueueFull
from lmforge.serve.streams import Choice, Disconnected, Streams, busy, citation_check
from lmforge.serve.tokens import chat_logprobs, completion_logprobs
from lmforge.tokenizer import ChatFormat, Message, TemplateRefused, encode_chat, with_system

T = TypeVar("T")

# request fields that, when sent, replace the assistant's sampling value of the same name
SAMPLED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty", "seed")


def stops(stop: str | list[str] | None) -> list[str]:
    found = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in found if s]  # an empty stop string would end every answer at once


def sampling_config(body: SamplingFields, defaults: SamplingConfig, max_tokens: int,
                    logprobs: int) -> SamplingConfig:
    """The assistant's sampling settings, with whatever the client sent in their place."""
    sent: dict[str, Any] = {name: getattr(body, name) for name in SAMPLED
                            if getattr(body, name) is not None}
    if body.stop is not None:
        sent["stop"] = stops(body.stop)
    config = dataclasses.replace(defaults, max_new_tokens=max_tokens, logprobs=logprobs, **sent)
    if body.seed is None and config.temperature > 0:
        # no seed sent: a fresh one, so no two users share the same "random" sample (an
        # explicit seed stays reproducible; greedy decoding needs none)
        config = dataclasses.replace(config, seed=secrets.randbits(31))
    return config


@contextmanager
def template_refusals(system_added: bool) -> Iterator[None]:
    """Encoding the messages (and grounding them, which encodes them to fit the passages): a
    refusal by the template is a 400 naming what it refused, never a 500. A message it names
    is counted in the conversation the template saw, which starts with the assistant's system
    prompt when the client sent none: the answer says so."""
    try:
        yield
    except TemplateRefused as err:
        shifted = system_added and err.message_index is not None
        note = " (message 0 is the assistant's system prompt, put first)" if shifted else ""
        raise APIError(400, f"{err}{note}", param="messages",
                       code="chat_template_refused") from None


@dataclass
class Serving:
    """Prompts are encoded in the model's chat format and end at its stop ids; RAG answers
    are decoded with ``grounding_settings`` (the model folder's)."""

    model: Transformer
    chat_format: ChatFormat
    assistant: AssistantConfig
    config: ServeConfig
    model_name: str
    runner: EngineRunner
    metrics: Metrics
    grounding: Grounding | None = None
    grounding_settings: GroundingConfig = field(default_factory=GroundingConfig)
    agent: AgentService | None = None
    feedback_file: Path | None = None  # where users' ratings go (None: they are refused)
    streams: Streams = field(init=False)
    moderator: Moderator = field(init=False)
    answers: Answers | None = field(init=False)

    def __post_init__(self) -> None:
        self.moderator = Moderator(self.config.moderation)
        self.answers = None if self.feedback_file is None else Answers(
            self.config.feedback_answers, self.feedback_file, self.model_name)
        self.streams = Streams(self.tok, self.config, self.model_name, self.runner, self.metrics,
                               self.moderator)

    @property
    def tok(self) -> Tokenizer:
        return self.chat_format.tokenizer

    @property
    def max_len(self) -> int:
        return self.config.context(self.model.config.max_seq_len)

    def sampling(self, body: SamplingFields, max_tokens: int, logprobs: int) -> SamplingConfig:
        return stopping(self.chat_format,
                        sampling_config(body, self.assistant.sampling, max_tokens, logprobs))

    # -- the two generation endpoints -------------------------------------------------------

    async def complete(self, body: CompletionRequest,
                       disconnected: Disconnected | None = None) -> Any:
        self.check(body)
        limits.check_completion(body, self.config)
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not text:
            raise APIError(400, "prompt is empty", param="prompt")
        verdict = self.moderator.check_input([text])
        if verdict is not None:
            current().flag(verdict)
            return envelope("text_completion", new_id("cmpl"), self.model_name,
                            [{"index": 0, "text": "", "finish_reason": "content_filter",
                              "logprobs": None}], usage=usage(0, 0),
                            moderation=verdict.as_dict())
        prompt = await run_in_threadpool(self.encode, text)  # off the event loop
        budget = self.budget(len(prompt), body.max_tokens, "prompt")
        request_id = new_id("cmpl")
        self.metrics.prompt_tokens += len(prompt) * body.n
        if body.use_beam_search:
            results = await self.beams(prompt, body, budget)
        else:
            config = self.sampling(body, budget, body.logprobs or 0)
            streams = self.streams.start(prompt, config, body.n, echo=body.echo)
            if body.stream:
                chunks = self.streams.completion_chunks(request_id, streams,
                                                        body.logprobs is not None)
                return self.streams.sse(chunks, streams)
            results = await self.streams.collect(streams, disconnected, "prompt")
        total = sum(r.tokens for r in results)
        self.metrics.completion_tokens += total
        current().add_usage(len(prompt), total)
        choices = []
        for i, result in enumerate(results):
            shown = self.moderator.screen(result.text)
            if shown.verdict is not None:
                current().flag(shown.verdict)
            choice: dict[str, Any] = {"index": i, "text": (text if body.echo else "") + shown.text,
                                      "finish_reason": "content_filter" if shown.verdict
                                      else result.finished, "logprobs": None}
            if body.logprobs is not None and result.events:
                choice["logprobs"] = completion_logprobs(self.tok, prompt, result.events,
                                                         body.echo)
            choices.append(choice)
        return envelope("text_completion", request_id, self.model_name, choices,
                        usage=usage(len(prompt), total))

    async def chat(self, body: ChatCompletionRequest, principal: Principal | None,
                   disconnected: Disconnected | None = None) -> Any:
        """A conversation without a system message gets the assistant's. A RAG answer is
        decoded with the grounding settings, unless it is a beam search: beams are ranked by
        the model's own likelihood, and keep plain decoding (the evidence is not used)."""
        self.check(body)
        limits.check_chat(body, self.config)
        verdict = self.moderator.check_input([m.text() for m in body.messages
                                              if m.role in ("system", "developer", "user")])
        if verdict is not None:  # tool results and earlier answers may quote clauses: unread
            return self.refused(body, verdict)
        messages = with_system(self.assistant.system, tools.conversation(body.messages))
        if body.agent:
            with template_refusals(len(messages) > len(body.messages)):
                return await agentic.answer(self, body, messages, principal)
        requested = body.max_completion_tokens or body.max_tokens
        decoding = await run_in_threadpool(self.tool_plan, body)  # compiles grammars: a thread
        with template_refusals(len(messages) > len(body.messages)):
            grounded = await self.ground(body, messages, principal, requested)
            if grounded is not None and not grounded.answerable:
                return self.no_answer(body, messages, principal)
            if grounded is not None:
                messages = grounded.messages
            prompt, evidence = await run_in_threadpool(self.encode_conversation, messages,
                                                       grounded, decoding.tools)
        cited: dict[str, Any] = {}
        if grounded is not None:  # the sources, and what retrieval searched for (stand-alone)
            cited = {"sources": grounded.sources(),
                     "retrieval": {"query": grounded.query, "scope": grounded.scope}}
            current().add_documents(s["document"] for s in cited["sources"])
        budget = self.budget(len(prompt), requested, "messages")
        request_id = new_id("chatcmpl")
        # what the first choice said, once it is whole: what its user may rate
        answered = partial(self.remember, request_id, principal, messages,
                           cited.get("sources", []))
        self.metrics.prompt_tokens += len(prompt) * body.n
        if body.use_beam_search:
            results = await self.beams(prompt, body, budget)
        else:
            config = self.sampling(body, budget, body.top_logprobs or 0)
            streams = self.streams.start(prompt, config, body.n, evidence=evidence,
                                         grammar=decoding.grammar)
            if body.stream:
                chunks = self.streams.chat_chunks(request_id, streams, cited, body.logprobs,
                                                  decoding, answered)
                return self.streams.sse(chunks, streams)
            results = await self.streams.collect(streams, disconnected, "messages")
        total = sum(r.tokens for r in results)
        self.metrics.completion_tokens += total
        current().add_usage(len(prompt), total)
        choices = [self.chat_choice(i, r, body.logprobs, cited, decoding)
                   for i, r in enumerate(results)]
        answered(choices[0]["message"]["content"] or "")
        return envelope("chat.completion", request_id, self.model_name, choices,
                        usage=usage(len(prompt), total), **cited)

    def chat_choice(self, index: int, result: Choice, logprobs: bool, cited: dict[str, Any],
                    decoding: tools.ToolPlan) -> dict[str, Any]:
        """One answer of a chat completion: its tool calls read back (with what was wrong
        with any that could not be passed on); with ``sources``, its citation check."""
        message, called, errors = tools.answer_message(result.text, decoding)
        shown = self.moderator.screen(message["content"] or "")
        finished = "tool_calls" if called and result.finished == "stop" else result.finished
        if shown.verdict is not None:  # cut before the blocked phrase; no call goes out
            current().flag(shown.verdict)
            message = {"role": "assistant", "content": shown.text}
            finished = "content_filter"
        elif message["content"]:
            message["content"] = shown.text  # PII redacted
        choice: dict[str, Any] = {
            "index": index, "message": message, "finish_reason": finished,
            "logprobs": (chat_logprobs(self.tok, self.streams.token_bytes, result.events)
                         if logprobs else None)}
        if errors:
            choice["tool_call_errors"] = errors
        if "sources" in cited:
            choice["citations"] = citation_check(message["content"] or "", cited["sources"])
        return choice

    async def embed(self, body: EmbeddingRequest) -> dict[str, Any]:
        if self.grounding is None:
            raise APIError(404, "no embedder: start the server with a RAG index (--rag-index)",
                           code="embeddings_unavailable")
        embedder = self.grounding.index.embedder
        limits.check_model(body.model, (self.model_name, embedder.name))
        texts = limits.check_embedding(body, self.config)
        embed = embedder.embed_queries if body.input_type == "query" else embedder.embed_passages
        vectors = await self.offload(embed, texts)
        count = sum(len(t) for t in texts)

        def encode(vector: Any) -> Any:
            if body.encoding_format == "base64":  # what the openai client asks for
                return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            return vector.tolist()

        return {"object": "list", "model": embedder.name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                         for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": count, "total_tokens": count}}

    # -- feedback ----------------------------------------------------------------------------

    def remember(self, request_id: str, principal: Principal | None, messages: list[Message],
                 sources: list[dict[str, Any]], answer: str) -> None:
        """Keep an answer (its first choice, as the client got it) for its user to rate."""
        if self.answers is not None:
            self.answers.remember(request_id, principal, messages, sources, answer)

    async def feedback(self, body: FeedbackRequest, principal: Principal | None
                       ) -> dict[str, str]:
        if self.answers is None:
            raise APIError(404, "this server keeps no feedback (serve.feedback_file is empty)",
                           code="feedback_unavailable")
        limits.check_feedback(body, self.config)
        item = await self.answers.rate(body, principal)
        return {"id": item.id, "status": "recorded"}

    # -- checks, grounding and the token budget ---------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tok.encode(text, add_special_tokens=False).ids
        return ids

    def encode_conversation(self, messages: list[Message], grounded: GroundedPrompt | None,
                            offered: list[dict[str, Any]] | None = None
                            ) -> tuple[list[int], Evidence | None]:
        """The conversation's generation prompt (with the ``offered`` tools, as the model's
        template renders them) and, for a grounded one, the evidence its decoding reads: the
        passages as the prompt shows them, under the grounding settings (plain settings give
        the plain prompt, and the engine decodes it plainly)."""
        if grounded is None:
            return encode_chat(self.chat_format, messages, add_generation_prompt=True,
                               tools=offered), None
        return evidence_prompt(self.chat_format, messages, grounded.question,
                               grounded.retrieved.shown, self.grounding_settings)

    def tool_plan(self, body: ChatCompletionRequest) -> tools.ToolPlan:
        """Tools, tool_choice and response_format as decoding will apply them. Beam search
        ranks whole beams and RAG answers decode over their passages: neither takes them."""
        decoding = tools.plan(body, self.chat_format)
        constrained = decoding.tools is not None or decoding.grammar is not None
        if constrained and body.use_beam_search:
            raise APIError(400, "use_beam_search does not take tools or response_format",
                           param="use_beam_search")
        if constrained and body.rag:
            raise APIError(400, "rag answers from its passages and takes no tools or "
                                "response_format; ask with agent=true for a tool-using answer",
                           param="rag")
        return decoding

    def check(self, body: SamplingFields) -> None:
        limits.check_model(body.model, (self.model_name,))
        if body.use_beam_search:
            for name in SAMPLED:  # beam search draws nothing: refused, never silently ignored
                if getattr(body, name) is not None:
                    raise APIError(400, f"{name} is a sampling parameter; use_beam_search "
                                        "does not sample (leave it out)", param=name)
            if body.stream:
                raise APIError(400, "use_beam_search does not stream; send stream=false",
                               param="stream")
            if body.n > self.config.max_beams:
                raise APIError(400, f"with use_beam_search, n (the beams) must be at most "
                                    f"{self.config.max_beams}", param="n")
        elif body.n > self.config.max_n:
            raise APIError(400, f"n must be at most {self.config.max_n}", param="n")

    async def ground(self, body: ChatCompletionRequest, messages: list[dict[str, str]],
                     principal: Principal | None, requested: int | None
                     ) -> GroundedPrompt | None:
        """With ``rag``: the one answer path, with the room the answer's budget leaves."""
        if not body.rag:
            return None
        if self.grounding is None:
            raise APIError(400, "this server has no RAG index", param="rag")
        if not any(m["role"] == "user" for m in messages):
            raise APIError(400, "rag needs a user message to answer", param="messages")
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        limits.check_question(question, self.config)
        options = body.rag if isinstance(body.rag, RagOptions) else RagOptions()
        room = self.max_len - (requested or self.assistant.sampling.max_new_tokens)
        try:
            who = access(principal, options.filter)
        except ValueError as err:  # a filter on access metadata would probe who may read what
            raise APIError(400, str(err), param="rag.filter") from None
        return await self.offload(self.grounding.ground, messages, self.chat_format, room, who,
                                  options.top_k)

    def budget(self, prompt_tokens: int, requested: int | None, param: str) -> int:
        """The answer's token budget: what the client asked for, else the assistant's
        ``max_new_tokens`` cut to the context that is left."""
        budget = requested or min(self.assistant.sampling.max_new_tokens,
                                  self.max_len - prompt_tokens)
        if budget < 1 or prompt_tokens + budget > self.max_len:
            raise APIError(400, f"this model's context is {self.max_len} tokens; the prompt "
                                f"has {prompt_tokens} and max_tokens is {max(budget, 0)}",
                           param=param, code="context_length_exceeded")
        return budget

    def no_answer(self, body: ChatCompletionRequest, messages: list[Message],
                  principal: Principal | None) -> Any:
        """Nothing relevant was retrieved: say so, never invent. No sources, so no sentence
        to check (``citations`` is empty). Its user may rate it: the gate may have been
        wrong."""
        request_id = new_id("chatcmpl")
        self.remember(request_id, principal, messages, [], NO_ANSWER)
        return self.fixed_answer(body, NO_ANSWER, "stop", {"citations": []}, {"sources": []},
                                 request_id)

    def refused(self, body: ChatCompletionRequest, verdict: Verdict) -> Any:
        """Moderation turned the request down: the policy's refusal, finish
        ``content_filter``, and which category (never the text that matched)."""
        current().flag(verdict)
        return self.fixed_answer(body, self.moderator.refusal, "content_filter", {},
                                 {"moderation": verdict.as_dict()})

    def fixed_answer(self, body: ChatCompletionRequest, text: str, finished: str,
                     per_choice: dict[str, Any], extra: dict[str, Any],
                     request_id: str | None = None) -> Any:
        """An answer the model did not generate, as a whole body or a one-chunk stream."""
        request_id = request_id or new_id("chatcmpl")
        if body.stream:
            async def chunks() -> AsyncIterator[dict[str, Any]]:
                yield envelope("chat.completion.chunk", request_id, self.model_name,
                               [{"index": 0, "delta": {"role": "assistant", "content": text},
                                 "finish_reason": finished, **per_choice}], **extra)
            return self.streams.sse(chunks(), [])
        return envelope("chat.completion", request_id, self.model_name,
                        [{"index": 0, "message": {"role": "assistant", "content": text},
                          "finish_reason": finished, "logprobs": None, **per_choice}],
                        usage=usage(0, 0), **extra)

    # -- the engine ---------------------------------------------------------------------------

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """A worker-thread job (beam search, embeddings, retrieval), counted against
        ``max_waiting`` with the engine's requests, so a flood of them is a 429 ``queue_full``
        rather than an unbounded queue. The slot is held until the thread ends (a started
        thread is waited for, even when its client has left)."""
        try:
            self.runner.reserve()
        except QueueFull as err:
            raise busy(err) from None
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            self.runner.release()

    async def beams(self, prompt: list[int], body: SamplingFields, budget: int) -> list[Choice]:
        """The ``n`` best beams, in a worker thread (the event loop keeps serving)."""
        found = await self.offload(beam_search, self.model, self.chat_format, prompt, body.n,
                                   budget, body.length_penalty)
        cut_at = stops(body.stop) if body.stop is not None else self.assistant.sampling.stop
        results = []
        for beam in found:
            finished = "stop" if beam.finished else "length"
            text = decode_whole(self.tok, beam.tokens)
            hits = [text.find(s) for s in cut_at if s in text]
            if hits:
                text, finished = text[:min(hits)], "stop"
            results.append(Choice(text, finished, len(beam.tokens), []))
        return results
