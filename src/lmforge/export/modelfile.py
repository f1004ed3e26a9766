"""The Ollama ``Modelfile`` beside a GGUF file, so ``ollama create NAME -f Modelfile`` gives the
assistant as trained: its chat template, where its answers stop, its system prompt and sampling.

Ollama renders conversations with Go templates, not Jinja, so the folder's Jinja template is
translated, not copied: each role's text before and after a message's content is read off
renderings of probe conversations (``ChatFormat.marked`` says where each content lies), and the
Go template writes those pieces around ``.Content`` for each message, then the generation
prompt. A template is translated only if rendering these pieces reproduces the Jinja template
exactly on every check conversation (with and without a system prompt, several turns); one that
does more (injects a default system prompt, numbers turns, reformats content) is refused by name
rather than translated into something that renders differently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.atomic import atomic_write_text
from lmforge.config import SamplingConfig
from lmforge.export.gguf import GGUFExport
from lmforge.tokenizer import ChatFormat, Message, load_chat_format

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
_S, _U, _A = ({"role": r, "content": f"{r} text"} for r in ROLES)


@dataclass(frozen=True)
class Turns:
    """What a template writes around one message's content, per role, and to open an answer."""

    before: dict[str, str]
    after: dict[str, str]
    generation: str

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(self.before[m["role"]] + m["content"] + self.after[m["role"]]
                       for m in messages) + self.generation


def _gaps(chat: ChatFormat, messages: Sequence[Message], generation: bool = False) -> list[str]:
    """The text between consecutive message contents of a rendering (first: before the
    first, last: after the last)."""
    rendered, spans = chat.marked(messages, add_generation_prompt=generation)
    bounds = [0] + [b for s in spans for b in (s.start, s.end)] + [len(rendered)]
    return [rendered[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2)]


def _strip(text: str, prefix: str = "", suffix: str = "") -> str:
    if not (text.startswith(prefix) and text.endswith(suffix)) or \
            len(prefix) + len(suffix) > len(text):
        raise ValueError("its text around messages is not the same for every turn")
    return text[len(prefix):len(text) - len(suffix)]


def chat_turns(chat: ChatFormat) -> Turns:
    """The per-role pieces of ``chat``'s template, checked against the template itself."""
    try:
        g = _gaps(chat, [_S, _U, _A, _U, _A])  # [before s, s|u, u|a, a|u, u|a, after a]
        after_a = g[5]
        before_u = _strip(g[3], prefix=after_a)
        after_u = _gaps(chat, [_S, _U])[2]
        before_a = _strip(g[2], prefix=after_u)
        after_s = _strip(g[1], suffix=before_u)
        opened = chat.render([_S, _U], add_generation_prompt=True)
        generation = _strip(opened, prefix=chat.render([_S, _U]))
        turns = Turns({"system": g[0], "user": before_u, "assistant": before_a},
                      {"system": after_s, "user": after_u, "assistant": after_a}, generation)
    except ValueError as err:
        raise ValueError(f"the chat template cannot be written as an Ollama template: {err}"
                         ) from err
    for messages in ([_U], [_S, _U], [_U, _A, _U], [_S, _U, _A, _U, _A, _U]):
        if turns.render(messages) != chat.render(messages, add_generation_prompt=True):
            raise ValueError("the chat template cannot be written as an Ollama template: it "
                             "renders " + "/".join(m["role"] for m in messages) + " otherwise "
                             "than text around each message (a default system prompt?)")
    return turns


def go_template(turns: Turns) -> str:
    """The Ollama (Go ``text/template``) form of ``turns``."""
    def literal(text: str) -> str:  # Go template text, with its delimiters escaped
        return text.replace("{{", "{{`{{`}}") if "}}" not in text else \
            "{{" + json.dumps(text) + "}}"

    branches = "".join(
        f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{literal(turns.before[role])}{{{{ .Content }}}}{literal(turns.after[role])}"
        for i, role in enumerate(ROLES))
    return f"{{{{- range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}" \
        f"{literal(turns.generation)}"


def modelfile_text(folder: Path, gguf_name: str, system: str | None,
                   sampling: SamplingConfig | None, context: int) -> str:
    """A template that cannot be translated is left out with the reason as a comment: Ollama
    then uses the template it recognises from the GGUF's ``tokenizer.chat_template``."""
    chat = load_chat_format(folder)
    lines = [f"FROM ./{gguf_name}"]
    try:
        template = go_template(chat_turns(chat))
        lines.append(f'TEMPLATE """{template}"""')
    except ValueError as err:
        log.warning("%s: Modelfile without TEMPLATE: %s", folder, err)
        template = ""
        lines.append(f"# no TEMPLATE: {err}")
    if '"""' in template + (system or ""):
        raise ValueError('the template or system prompt contains """, which a Modelfile '
                         "cannot quote")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    stops = sorted({chat.tokenizer.decode([i], skip_special_tokens=False) for i in chat.stop_ids})
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {context}")
    if sampling is not None:
        lines += [f"PARAMETER {name} {value}" for name, value in (
            ("num_predict", sampling.max_new_tokens), ("temperature", sampling.temperature),
            ("top_p", sampling.top_p), ("top_k", sampling.top_k), ("min_p", sampling.min_p),
            ("repeat_penalty", sampling.repetition_penalty),
            ("presence_penalty", sampling.presence_penalty),
            ("frequency_penalty", sampling.frequency_penalty))]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, exported: GGUFExport, system: str | None,
                    sampling: SamplingConfig | None) -> Path:
    """``Modelfile`` beside the GGUF file, for the model and tokenizer of ``folder``."""
    out = exported.path.parent / "Modelfile"
    atomic_write_text(out, modelfile_text(Path(folder), exported.path.name, system, sampling,
                                          exported.context))
    return out
