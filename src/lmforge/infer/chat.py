"""Multi-turn chat over the engine: the conversation state, and the terminal loop of
``lmforge chat`` (``/reset``, ``/system TEXT``, ``/quit``), with input and output passed in so
the loop is tested without a terminal. A message the model's chat template refuses is shown
the template's reason and left out of the history; the chat goes on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from lmforge.config import SamplingConfig
from lmforge.infer.detokenize import stopping
from lmforge.infer.engine import Engine
from lmforge.model import Transformer
from lmforge.tokenizer import ChatFormat, TemplateRefused, encode_chat, with_system

HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /quit"


@dataclass
class ChatSession:
    model: Transformer
    chat: ChatFormat
    sampling: SamplingConfig
    system: str = ""
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self) -> list[dict[str, str]]:
        return with_system(self.system, self.turns)

    def reply(self, user: str) -> Iterator[str]:
        """Stream the assistant's answer to ``user``; the exchange joins the history. The
        oldest exchanges are dropped when the conversation outgrows the context. A
        conversation the template refuses raises ``TemplateRefused`` with the history as it
        was."""
        earlier = list(self.turns)
        self.turns.append({"role": "user", "content": user})
        context = self.model.config.max_seq_len
        try:
            prompt = self._prompt()
            while len(prompt) > context - self.sampling.max_new_tokens and len(self.turns) > 1:
                self.turns = self.turns[2:]
                prompt = self._prompt()
        except TemplateRefused:
            self.turns = earlier
            raise
        # the cache holds this reply only, not the model's whole context (131072 positions
        # for a Llama 3.1: gigabytes per reply); a prompt still too long is cut from the left
        engine = Engine(self.model, self.chat.tokenizer, max_batch=1,
                        max_len=min(len(prompt) + self.sampling.max_new_tokens, context),
                        overflow="truncate")
        engine.submit(prompt, stopping(self.chat, self.sampling))
        answer = ""
        for event in engine.run():
            answer += event.text
            if event.text:
                yield event.text
        self.turns.append({"role": "assistant", "content": answer})

    def _prompt(self) -> list[int]:
        return encode_chat(self.chat, self.messages(), add_generation_prompt=True)


def terminal_chat(session: ChatSession, read: Callable[[str], str], out: TextIO) -> None:
    """The interactive loop; ``read`` is ``input`` in a terminal (EOF ends the chat)."""
    out.write(HELP + "\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            session.turns.clear()
            out.write("(new conversation)\n")
            continue
        if line.startswith("/system"):
            session.system = line.removeprefix("/system").strip()
            session.turns.clear()
            out.write("(system prompt set; new conversation)\n")
            continue
        out.write("assistant> ")
        try:
            for piece in session.reply(line):
                out.write(piece)
                out.flush()
        except TemplateRefused as err:
            out.write(f"(not sent: {err})")
        out.write("\n")
