"""Follow-up questions made stand-alone before retrieval.

In a conversation the user's second question leans on the first: "《安联臻爱一世》的犹豫期有多长？"
then "那它的等待期呢？". Retrieving on the last message alone searches for "它的等待期" in every
contract. ``RuleRewriter`` carries the conversation's entities into the question: product or
contract names (the values of the index's document metadata, e.g. ``contract`` or ``title``,
and anything in 《》), glossary terms and quoted names. Rules, not a model, by default: they
are deterministic, take microseconds, and cannot drift the way a small model's rewrite does (a
new condition, a lost number; ``rag/expand.py`` says the same of rewrites for fusion). A model
can be plugged in through the ``Rewriter`` protocol (``lmforge.infer.model_rewriter``).

A question is rewritten only when it looks dependent: it names no product of its own and has a
cue (这款产品/该保险/本合同/this policy; 它/it near its start; a leading 那/那么/what about; a
short "…呢"). A stand-alone question comes back unchanged, character for character. The
cues are replaced by the entity (它的等待期 -> 安联臻爱一世的等待期); a bare "那X呢" takes the
place of the earlier question's glossary term (犹豫期 -> 等待期) or is prefixed with the product.

The name in the rewrite is not what finds the passages: contracts seldom write their own name,
so its words in the query only pull the ranking elsewhere (measured in docs/experiments.md).
``scope`` turns it into the metadata of that product's documents, and ``Grounding`` searches
only there, for ``search_text``: the rewrite without the name.

The evaluation that shows why is ``rag/followup_eval.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from lmforge.rag.expand import load_glossary
from lmforge.rag.index import RagIndex
from lmforge.tokenizer import Message


class Rewriter(Protocol):
    """A follow-up made stand-alone: the conversation before the question, and the question."""

    def __call__(self, history: list[Message], question: str, /) -> str: ...


NAME_FIELDS = ("contract", "title", "product")  # document metadata that names a product
BRACKETS = re.compile(r"[（(][^（）()]*[）)]")
MIN_NAME = 4  # shorter metadata values ("2-1") would match inside ordinary words
# 这款产品, 该保险, 本合同, 上述保单 (not 该保险金/本保险费: those are a benefit and a premium)
# (那 only with a classifier: "那保险争议" is no reference)
NOUN = r"(?:保险合同|保险产品|产品|合同|保单|险种|保险(?![金费期人责事利单标额]))"
ZH_PRODUCT = re.compile(rf"(?:这|该|此|本|上述|上面的?|刚才的?)一?(?:款|个|份|张|种)?{NOUN}"
                        rf"|那一?(?:款|个|份|张|种){NOUN}|这款|那款")
EN_PRODUCT = re.compile(r"\b(?:this|that|the|your|my)\s+(?:insurance\s+)?"
                        r"(?:policy|product|plan|contract|insurance|coverage)\b", re.I)
ZH_PRONOUN = re.compile(r"它们?")
EN_PRONOUN = re.compile(r"\b(?:it's|its|it)\b", re.I)
ZH_LEAD = re.compile(r"^\s*(?:那么|那(?![些个时里儿样]))[，,、\s]*")
EN_LEAD = re.compile(r"^\s*(?:and\s+)?(?:what|how)\s+about\b\s*|^\s*and\s+", re.I)
TAIL = re.compile(r"呢\s*[？?]?\s*$")
QUOTED = re.compile(r"《(?P<book>[^《》]{2,40})》|[“\"「](?P<quote>[^“”\"「」]{2,30})[”\"」]")
GENERIC = re.compile(r"^(?:本|该|此)?(?:保险)?(?:合同|条款|保单|产品)$")  # 《保险合同》 names none
# a quoted name that ends like a product's is one ("“安心保意外险”"; not "“保险金额”")
PRODUCT_WORD = re.compile(r"(?:险|年金|合同|条款|产品|计划|insurance|policy|plan)$", re.I)
NOT_A_NOUN = re.compile(r"如果|假如|若|要是|我|是否|能否|可以|会|怎么|如何|吗|什么|多少|哪"
                        r"|\b(?:if|i|can|do|does|is|are|will|how|what|when|why)\b", re.I)
ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.I)
WORD = re.compile(r"[\u4e00-\u9fff]|[A-Za-z0-9]+")
# sizes in characters of Chinese, words of English: 它 after more content than PRONOUN_REACH
# has its antecedent in the question itself; "那X呢" / "what about X": X at most ELLIPSIS long
PRONOUN_REACH = 6
ELLIPSIS = 12
FRAME = re.compile(r"^\s*(?:关于|about)\s*[，,：:]\s*", re.I)  # what is left of "关于X，"
Kind = Literal["product", "term"]


@dataclass(frozen=True)
class Mention:
    text: str  # as the conversation wrote it
    kind: Kind
    start: int
    end: int


def name_forms(name: str) -> list[str]:
    """How a user may write a document's product name: whole, the part in 《》, without a
    trailing 条款 / 产品条款 (``《泰康团体重大疾病保险F款》产品条款`` ->
    ``泰康团体重大疾病保险F款``), and that without its brackets
    (``安联臻爱一世（少儿版）重大疾病保险条款`` -> ``安联臻爱一世重大疾病保险``)."""
    forms = [name.strip()]
    inner = re.search(r"《([^》]+)》", name)
    if inner:
        forms.append(inner.group(1))
    short = re.sub(r"[\s_\-－]*(?:产品)?条款$", "", name.strip()).strip("《》 ")
    forms += [short, BRACKETS.sub("", short).strip()]
    return [f for f in dict.fromkeys(forms) if len(f) >= MIN_NAME]


def _alternation(words: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(words), key=lambda w: (-len(w), w))  # longest first
    return re.compile("|".join(map(re.escape, ordered)), re.I) if ordered else None


class RuleRewriter:
    """The rule-based ``Rewriter``: products and terms it knows, looking back ``turns`` user
    turns (each earlier one made stand-alone first, so a product named three turns ago is
    carried through the follow-ups in between). ``fields`` says which document metadata field
    a product name is the value of, so that ``scope`` can name the product's documents."""

    def __init__(self, products: Iterable[str] = (), terms: Iterable[str] = (),
                 turns: int = 3, fields: Mapping[str, str] | None = None) -> None:
        if turns < 1:
            raise ValueError(f"turns: expected at least 1, got {turns}")
        self.turns = turns
        self._named: dict[str, set[str]] = {}  # a way of writing a name -> the names
        for name in products:
            for form in name_forms(name):
                self._named.setdefault(form.lower(), set()).add(name)
        self._fields = dict(fields or {})
        self._products = _alternation(self._named)
        self._terms = _alternation(t.strip() for t in terms if len(t.strip()) >= 2)

    @classmethod
    def for_index(cls, index: RagIndex, fields: Sequence[str] = NAME_FIELDS,
                  turns: int = 3) -> RuleRewriter:
        """Products named by the index's documents' metadata, terms of its glossary."""
        named: dict[str, str] = {}
        for doc in index.docs.values():
            for name in fields:
                if doc.meta.get(name):
                    named.setdefault(str(doc.meta[name]), name)
        glossary = index.config.glossary
        terms = [e.term for e in load_glossary(Path(glossary))] if glossary else []
        return cls(named, terms, turns, named)

    def scope(self, text: str) -> dict[str, str]:
        """The metadata of the documents of the product ``text`` names first (``{"contract":
        name}``): the name written exactly, else the one name the way it is written fits;
        empty when it names none, or fits several names and is none of them."""
        product = next((m for m in self.mentions(text) if m.kind == "product"), None)
        if product is None:
            return {}
        written = product.text.lower()
        names = self._named.get(written, set())
        exact = [n for n in names if n.lower() == written]
        chosen = exact if len(exact) == 1 else list(names)
        if len(chosen) != 1 or chosen[0] not in self._fields:
            return {}
        return {self._fields[chosen[0]]: chosen[0]}

    def search_text(self, text: str, name: str) -> str:
        """What to search for among the documents of product ``name``: ``text`` without its
        mentions of the name (and a 关于…， / About …: around one), where the name tells no
        document apart, and without an ellipsis' 呢 (no content, and a rare bigram that
        lowers the question's term coverage); ``text`` itself when nothing would be left."""
        spans = [m for m in self.mentions(text) if m.kind == "product"
                 and name in self._named.get(m.text.lower(), {m.text})]
        out = text
        for m in reversed(spans):
            out = out[: m.start] + out[m.end:]
        out = TAIL.sub("？", FRAME.sub("", out, count=1).lstrip(" ，,：:的里呢？?"))
        return out if _size(out) else text

    # ---- what a text mentions -------------------------------------------------------------
    def mentions(self, text: str) -> list[Mention]:
        """Products (known names, 《》 names, quoted names that look like one) and terms
        (glossary terms, other quoted names), in order; a term inside a product is not one."""
        found = [Mention(m.group(), "product", m.start(), m.end())
                 for m in (self._products.finditer(text) if self._products else ())]
        for m in QUOTED.finditer(text):
            name = m.group("book") or m.group("quote")
            if GENERIC.match(name):
                continue
            kind: Kind = "product" if m.group("book") or PRODUCT_WORD.search(name) else "term"
            found.append(Mention(name, kind, m.start(), m.end()))
        if self._terms:
            found += [Mention(m.group(), "term", m.start(), m.end())
                      for m in self._terms.finditer(text)]
        kept: list[Mention] = []
        for mention in sorted(found, key=lambda m: (m.start, -(m.end - m.start))):
            if not any(k.start <= mention.start < k.end for k in kept):
                kept.append(mention)
        return kept

    def names_product(self, text: str) -> bool:
        return any(m.kind == "product" for m in self.mentions(text))

    def dependent(self, history: Sequence[Message], question: str) -> bool:
        """Whether ``question`` leans on an earlier turn: there is one, the question names no
        product of its own, and it has a reference or ellipsis cue."""
        if not any(m.get("role") == "user" for m in history) or self.names_product(question):
            return False
        return bool(ZH_PRODUCT.search(question) or EN_PRODUCT.search(question)
                    or self._pronoun(question) or ZH_LEAD.match(question)
                    or EN_LEAD.match(question) or self._ellipsis(question))

    # ---- rewriting ------------------------------------------------------------------------
    def __call__(self, history: list[Message], question: str) -> str:
        window = _last_turns(history, self.turns)
        resolved: list[str] = []  # earlier user turns, each made stand-alone
        for text in (m["content"] for m in window if m["role"] == "user"):
            resolved.append(self._rewrite(resolved, window, text))
        return self._rewrite(resolved, window, question)

    def _rewrite(self, users: list[str], window: list[Message], question: str) -> str:
        if not users or self.names_product(question):
            return question
        assistants = [m["content"] for m in window if m["role"] == "assistant"]
        product = self._latest(users, "product") or self._latest(assistants, "product")
        term = self._latest(users[-1:], "term")
        out = question
        if product:
            out = EN_PRODUCT.sub(product, ZH_PRODUCT.sub(product, out))
        pronoun = self._pronoun(out)
        if pronoun and (product or term):
            out = _replace(out, pronoun, product or term or "")
        if out == question and (ZH_LEAD.match(out) or EN_LEAD.match(out) or self._ellipsis(out)):
            out = self._ellipsis_rewrite(out, users[-1], product)
        return question if out == question else ZH_LEAD.sub("", out, count=1)

    def _latest(self, texts: Sequence[str], kind: Kind) -> str | None:
        """The first ``kind`` mention of the latest text that has one (products: the subject;
        terms: the last, the focus of a question like "X的犹豫期有多长")."""
        for text in reversed(texts):
            found = [m.text for m in self.mentions(text) if m.kind == kind]
            if found:
                return found[0] if kind == "product" else found[-1]
        return None

    def _pronoun(self, question: str) -> re.Match[str] | None:
        """它/it as a reference to the conversation: near the start (Chinese), with no
        product or term of the question's own before it."""
        rest = _strip_lead(question)
        offset = len(question) - len(rest)
        for pattern in (ZH_PRONOUN, EN_PRONOUN):
            match = pattern.search(rest)
            if match is None:
                continue
            before = rest[: match.start()]
            if self.mentions(before) or (pattern is ZH_PRONOUN
                                          and _size(before) > PRONOUN_REACH):
                continue
            return pattern.search(question, offset + match.start())
        return None

    def _ellipsis(self, question: str) -> bool:
        body = TAIL.sub("", _strip_lead(question))
        return bool(TAIL.search(question)) and _size(body) <= ELLIPSIS

    def _ellipsis_rewrite(self, question: str, previous: str, product: str | None) -> str:
        """"那等待期呢？" after "X的犹豫期有多长？": the earlier question with its focus term
        replaced; otherwise the question about the product."""
        rest = _strip_lead(question)
        focus = ARTICLE.sub("", TAIL.sub("", rest).strip(" ，,。？?"))
        terms = [m for m in self.mentions(previous) if m.kind == "term"]
        bare = TAIL.search(question) or EN_LEAD.match(question)
        if (bare and terms and focus and focus.lower() not in previous.lower()
                and _size(focus) <= ELLIPSIS and not NOT_A_NOUN.search(focus)
                and not _refers(focus)):
            last = terms[-1]
            return previous[: last.start] + focus + previous[last.end:]
        if product is None:
            return question
        if re.search(r"[\u4e00-\u9fff]", rest):
            return f"关于{product}，{rest}"
        return f"About {product}: {rest}"


def _refers(text: str) -> bool:
    return any(p.search(text) for p in (ZH_PRODUCT, EN_PRODUCT, ZH_PRONOUN, EN_PRONOUN))


def _size(text: str) -> int:
    return len(WORD.findall(text))


def _strip_lead(question: str) -> str:
    return EN_LEAD.sub("", ZH_LEAD.sub("", question, count=1), count=1)


def _replace(text: str, match: re.Match[str], entity: str) -> str:
    word = match.group().lower()
    said = {"its": f"{entity}'s", "it's": f"{entity} is"}.get(word, entity)
    return text[: match.start()] + said + text[match.end():]


def _last_turns(history: Sequence[Message], turns: int) -> list[Message]:
    """The messages from the ``turns``-th last user message on (user and assistant only)."""
    users = [i for i, m in enumerate(history) if m.get("role") == "user"]
    start = users[-turns] if len(users) >= turns else 0
    return [m for m in history[start:] if m.get("role") in ("user", "assistant")
            and isinstance(m.get("content"), str)]


def read_conversation(path: Path) -> list[Message]:
    """A conversation file: a JSON list of messages, a JSON object with ``messages``, or JSONL
    with one message per line; each message needs a ``role`` and a string ``content``."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: expected JSON or JSONL messages ({err.msg})") from None
    if isinstance(data, dict):  # one object: the messages' holder, or a one-line JSONL
        data = data.get("messages", [data])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of messages or an object with 'messages'")
    for n, message in enumerate(data, 1):
        if (not isinstance(message, dict)
                or message.get("role") not in ("system", "user", "assistant", "tool")
                or not isinstance(message.get("content"), str)):
            raise ValueError(f"{path}: message {n} needs a 'role' (system, user, assistant or "
                             "tool) and a string 'content'")
    return data
