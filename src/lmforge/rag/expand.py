"""Rule-made rewrites of a question for RAG-Fusion: the same question in the words the
contracts use.

Rules, not a model: a small model writes rewrites that drift from the question (a new
condition, a lost number), while the mismatches that cost retrieval here are mechanical. A
user writes "30天" where the clause says "三十日", "第12条" for "第十二条", "50%" for
"百分之五十", or a full name where the contract uses the short name it defined once. Both
sides of that last pair are written down, and lmforge learns them from there:

- the glossary: its ``synonyms`` (or ``aliases``) field, definitions saying 又称/简称/也称/
  亦称/俗称/也叫/别称/又名 X or starting with 即X, and abbreviations in a term
  ("人类免疫缺陷病毒（HIV）");
- the passages: their own definitions, ``中国银行保险监督管理委员会（以下简称“银保监会”）``,
  ``投保人（以下简称“您”）``, ``…，以下简称为X``, and the 又称 lists of medical definitions.

An alias is kept only when it looks safe: 2-12 characters (a one-character "您" is also a BM25
stop word, so writing it in only deletes a term), not a stop word, not inside its own full
name, no phrase (a name holding 的 or 、, or starting with 根据/是/或…), naming one full name
only across the documents (contracts reuse "主险" for different things), and no word every
document uses ("本合同"). Matching is one longest-first dictionary scan in which glossary
terms also take part, so an alias never matches inside a longer term ("保险人" inside
"被保险人"). Which numeral form is usual (Arabic or Chinese, per unit: "日" both, "条"
Chinese) is counted in the passages.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data import jsonl_records
from lmforge.rag.keyword import STOP

CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
            "七": 7, "八": 8, "九": 9}
CN_POWER = {"十": 10, "百": 100, "千": 1000}
CN = "零〇一二两三四五六七八九十百千"
# units after a number, longest first; 天 and 岁 are read as 日 and 周岁 (what contracts write)
UNITS = ("个工作日", "工作日", "个小时", "小时", "分钟", "个月", "周岁", "万元", "日", "天", "年",
         "岁", "周", "倍", "元", "项", "级", "条", "款", "章", "节", "部分", "个", "%", "％")
ORDINAL_ONLY = {"条", "款", "章", "节", "部分", "个"}  # only after 第: "三个" is not a clause
UNIT_WORD = {"天": "日", "岁": "周岁", "％": "%", "个小时": "小时"}
NUMBER = re.compile(
    r"(?P<pct>百分之(?P<pv>[零〇一二两三四五六七八九十百千]+|\d{1,4})(?![\d.]))"
    r"|(?P<dec>第?\s*(?P<dv>\d{1,2}(?:\.\d{1,3})+)\s*条)"
    r"|(?P<ord>第\s*)?(?P<num>(?<![\d.,])\d{1,4}(?![\d.,])"
    rf"|(?<![{CN}统同唯单任逐哪这那每])[{CN}]+)\s*(?P<unit>{'|'.join(UNITS)})(?!性)")
ASCII_WORD = re.compile(r"[A-Za-z0-9]")
SAID = "又称|也称|亦称|俗称|也叫|别称|又名"
# a name in a passage: the run back to the last clause break; one holding 、 is not taken
# ("其他必要的、合理的费用（以下简称“法律费用”）" is no name of 法律费用)
PASSAGE_ALIAS = re.compile(
    r"(?P<name>[^\s，。；：！？,;:（）()“”\"]{2,24})\s*[（(][^（）()]{0,40}?"
    r"(?:以下简?称|简称)为?\s*[“\"《]?(?P<alias>[^”\"》）)，。；、\s]{1,14})[”\"》]?\s*[）)，；]"
    r"|(?P<name2>[^\s，。；：！？,;:（）()“”\"]{2,24})，以下简称为?\s*[“\"]?"
    r"(?P<alias2>[^”\"，。；、\s]{1,14})")
SAID_ALIAS = re.compile(rf"(?P<name>[^\s，。；：！？,;:（）()“”\"]{{2,16}}?)(?:{SAID})为?"
                        r"[“\"]?(?P<aliases>[^，。；：！？\s“”\"]{2,40})")
DEFINED_ALIAS = re.compile(rf"(?:{SAID}|简称|或称)为?[“\"]?"
                           r"(?P<aliases>[^，。；：！？\s“”\"]{2,40})")
ABBREVIATION = re.compile(r"(?<![\u4e00-\u9fff])(?P<name>[\u4e00-\u9fff]{2,24})\s*[（(]\s*"
                          r"(?P<alias>[A-Za-z][A-Za-z0-9\-]{1,9})\s*[）)]")
COMMON = 0.1  # an alias in more than this share of the passages is a word they all use
QUOTES = "“”\"‘’《》「」『』 \t"
BREAKS = " \t\n，。；：、！？,;:（(“\""  # where a name may start
# words that start no name ("根据世界卫生组织（WHO）", "检测左室射血分数（LVEF）")
LEADING = (*"是凡或及且和与指经由须据对因为将但并而则即如若", "根据", "检测", "使用", "通过")


@dataclass(frozen=True)
class GlossaryEntry:
    term: str
    definition: str
    synonyms: tuple[str, ...] = ()


def load_glossary(path: Path | str) -> list[GlossaryEntry]:
    """Entries of a jsonl glossary (``term``, ``definition``, optional ``synonyms`` or
    ``aliases`` list); a record of the wrong shape is an error naming the file and line."""
    path = Path(path)
    lines = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]  # jsonl_records skips blank lines: its n-th record is lines[n]
    entries = []
    for lineno, record in zip(lines, jsonl_records(path, ("term", "definition")), strict=True):
        entries.append(_entry(record, f"{path}:{lineno}"))
    return entries


def _entry(record: dict[str, Any], where: str) -> GlossaryEntry:
    term, definition = record["term"], record["definition"]
    synonyms = record.get("synonyms", record.get("aliases", []))
    if not isinstance(term, str) or not term.strip():
        raise ValueError(f"{where}: 'term' must be a non-empty string")
    if not isinstance(definition, str):
        raise ValueError(f"{where}: 'definition' must be a string")
    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
        raise ValueError(f"{where}: 'synonyms' must be a list of strings")
    return GlossaryEntry(term.strip(), definition.strip(), tuple(s.strip() for s in synonyms))


# ---- numerals ----------------------------------------------------------------------------
def chinese_value(text: str) -> int | None:
    """0-9999 written in Chinese ("三十", "一百零五", "两千", "二〇一三"), or None."""
    if not any(c in CN_POWER for c in text):
        return int("".join(str(CN_DIGIT[c]) for c in text)) if len(text) <= 4 else None
    total, digit, last_power = 0, 0, 10_000
    for c in text:
        if c in CN_POWER:
            if CN_POWER[c] >= last_power:
                return None
            total += (digit or 1) * CN_POWER[c]
            digit, last_power = 0, CN_POWER[c]
        elif digit:  # two digits in a row ("三四十")
            return None
        else:
            digit = CN_DIGIT[c]
    return total + digit


def chinese_numeral(value: int, year: bool = False) -> str:
    """``value`` (0-9999) in Chinese; a year digit by digit ("二〇二一")."""
    if year:
        return "".join("〇一二三四五六七八九"[int(d)] for d in str(value))
    if value == 0:
        return "零"
    out, gap = "", False
    for power, name in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = value // power % 10
        if not d:
            gap = bool(out)
            continue
        lead = "" if power == 10 and d == 1 and not out else "零一二三四五六七八九"[d]
        out += ("零" if gap else "") + lead + name
        gap = False
    return out


@dataclass(frozen=True)
class Numeral:
    """One number with its unit as a question or clause writes it."""

    value: int
    unit: str  # the canonical unit word ("日" for 天, "周岁" for 岁); "%" for percentages
    ordinal: bool  # 第…
    arabic: bool  # as written
    written: str  # the number as written ("两", "30")

    @property
    def kind(self) -> tuple[bool, str]:
        return self.ordinal, self.unit

    def render(self, arabic: bool) -> str:
        """In Arabic or Chinese, a number already in that form as it was written."""
        if arabic == self.arabic:
            number = self.written
        else:
            number = str(self.value) if arabic else chinese_numeral(
                self.value, year=self.unit == "年" and self.value >= 1000)
        if self.unit == "%":
            return f"{number}%" if arabic else f"百分之{number}"
        return ("第" if self.ordinal else "") + number + self.unit


def _numeral(match: re.Match[str]) -> Numeral | None:
    if match["pct"]:
        text = match["pv"]
        value = int(text) if text.isdigit() else chinese_value(text)
        return None if value is None else Numeral(value, "%", False, text.isdigit(), text)
    ordinal, text, unit = bool(match["ord"]), match["num"], match["unit"]
    if unit in ORDINAL_ONLY and not ordinal:
        return None
    if not text.isdigit() and len(text) > 1 and unit != "年" and not set(text) & set(CN_POWER):
        return None  # "三四天" is three or four days
    value = int(text) if text.isdigit() else chinese_value(text)
    if value is None:
        return None
    return Numeral(value, UNIT_WORD.get(unit, unit), ordinal, text.isdigit(), text)


def _rewrite_numbers(text: str, arabic: Callable[[Numeral], bool]) -> str:
    """``text`` with each number in the form ``arabic`` picks; clause numbers "第3.2条" as
    contracts head them ("3.2"); a number already in that form is left as written."""
    def one(match: re.Match[str]) -> str:
        if match["dec"]:
            return match["dv"]
        numeral = _numeral(match)
        if numeral is None:
            return match[0]
        rendered = numeral.render(arabic(numeral))
        return match[0] if rendered == re.sub(r"\s", "", match[0]) else rendered
    return NUMBER.sub(one, text)


def normalise_numbers(text: str) -> str:
    """Every number after a unit in Arabic digits with the contracts' unit word: "三十天" and
    "30日" both become "30日", "百分之五十" "50%", "第十二条" "第12条", "十八岁" "18周岁"."""
    return _rewrite_numbers(text, lambda _: True)


def numerals(text: str) -> Iterator[tuple[re.Match[str], Numeral]]:
    """The numbers with a unit in ``text`` and where each is."""
    for match in NUMBER.finditer(text):
        numeral = None if match["dec"] else _numeral(match)
        if numeral is not None:
            yield match, numeral


def usual_forms(passages: Iterable[str]) -> dict[tuple[bool, str], bool]:
    """Per kind of number (ordinal?, unit): whether the passages mostly write it in Arabic."""
    votes: Counter[tuple[tuple[bool, str], bool]] = Counter()
    for text in passages:
        for _, numeral in numerals(text):
            votes[numeral.kind, numeral.arabic] += 1
    kinds = {kind for kind, _ in votes}
    return {kind: votes[kind, True] >= votes[kind, False] for kind in sorted(kinds)}


# ---- aliases -----------------------------------------------------------------------------
def glossary_pairs(entries: Iterable[GlossaryEntry]) -> Iterator[tuple[str, str]]:
    """(alias, full name) pairs a glossary states."""
    for entry in entries:
        term = entry.term.strip(QUOTES)
        for abbreviation in ABBREVIATION.finditer(term):
            yield abbreviation["alias"], abbreviation["name"]
            term = abbreviation["name"]
        for synonym in entry.synonyms:
            yield synonym, term
        for match in DEFINED_ALIAS.finditer(entry.definition):
            for alias in re.split(r"[、/或]", match["aliases"]):
                yield alias, term
        said = re.match(r"即[“\"]?([^，。；：“”\"（(]{2,14})[”\"]?[，。；（(]", entry.definition)
        if said:
            yield said.group(1), term


def passage_pairs(text: str, terms: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """(alias, full name) pairs a passage defines for itself."""
    for match in PASSAGE_ALIAS.finditer(text):
        yield match["alias"] or match["alias2"], match["name"] or match["name2"]
    for match in SAID_ALIAS.finditer(text):
        for alias in match["aliases"].split("、"):
            yield alias, match["name"]
    for match in ABBREVIATION.finditer(text):
        name = abbreviated(match["name"], terms, not match.start() or text[match.start() - 1]
                           in BREAKS)
        if name:
            yield match["alias"], name


def abbreviated(run: str, terms: frozenset[str], at_break: bool) -> str | None:
    """What an abbreviation in brackets stands for: the longest glossary term ending the
    characters before it, or all of them when they start a clause (where else the name
    starts is a guess: "须由头颅断层扫描（CT）")."""
    for start in range(len(run) - 1):
        if run[start:] in terms:
            return run[start:]
    return run if at_break and len(run) <= 10 else None


def safe(alias: str, name: str) -> bool:
    """Whether rewriting one into the other is unlikely to change what is asked."""
    return (2 <= len(alias) <= 12 and 2 <= len(name) <= 16 and alias not in STOP
            and name not in STOP and alias not in name and name not in alias
            and not any(c in "，。；：！？、,;的" for c in alias + name)  # a phrase, no name
            and not name.startswith(LEADING) and not alias.isdigit()
            and not any(c.isdigit() for c in name))  # a code ("JR/T0083－2013") names nothing


def learn_aliases(pairs: Iterable[tuple[str, str]], texts: Sequence[str] = ()) -> dict[str, str]:
    """alias -> full name, for the safe aliases that name one full name only and are no
    common word of ``texts`` (the documents): "本合同", in 40% of the clauses, names every
    contract, and swapping it for "本保险合同" only adds noise."""
    names: dict[str, Counter[str]] = defaultdict(Counter)
    for alias, name in pairs:
        alias, name = alias.strip(QUOTES), name.strip(QUOTES)
        if safe(alias, name):
            names[alias][name] += 1
    corpus, common = "\0".join(texts), max(COMMON * len(texts), 10)
    unique = {alias: next(iter(found)) for alias, found in sorted(names.items())
              if len(found) == 1 and corpus.count(alias) <= common}
    return {alias: name for alias, name in unique.items() if name not in unique}  # no chains


class Expander:
    """Rewrites questions with what the glossary and the passages define."""

    def __init__(self, aliases: Mapping[str, str], usual: Mapping[tuple[bool, str], bool],
                 terms: Iterable[str] = ()) -> None:
        self.aliases = dict(aliases)  # alias -> full name
        self.usual = dict(usual)  # (ordinal?, unit) -> written in Arabic
        shortest: dict[str, str] = {}
        for alias, name in sorted(self.aliases.items(), key=lambda p: (len(p[0]), p[0])):
            shortest.setdefault(name, alias)
        self.names = shortest  # full name -> its shortest alias
        # glossary terms take part in the scan so that the words inside them stay as they are
        self.known = {t for t in terms if t.strip()} | set(self.aliases) | set(self.names)
        self.sizes = sorted({len(t) for t in self.known}, reverse=True)

    @classmethod
    def build(cls, entries: Sequence[GlossaryEntry], passages: Iterable[str]) -> Expander:
        texts = list(passages)
        terms = frozenset(e.term.strip(QUOTES) for e in entries)
        pairs = [*glossary_pairs(entries),
                 *(p for text in texts for p in passage_pairs(text, terms))]
        return cls(learn_aliases(pairs, texts), usual_forms(texts), sorted(terms))

    def rewrites(self, question: str, limit: int = 4) -> list[str]:
        """Up to ``limit`` distinct rewrites, never the question itself, most useful first:
        numbers as the passages usually write them, aliases spelled out, full names
        shortened, numbers in the other form."""
        candidates = (
            lambda: _rewrite_numbers(question, self._is_usual),
            lambda: self._replace(question, self.aliases),
            lambda: self._replace(question, self.names),
            lambda: _rewrite_numbers(question, lambda n: not self._is_usual(n)),
        )
        found: list[str] = []
        for make in candidates:
            if len(found) >= limit:
                break
            rewrite = make()
            if rewrite != question and rewrite not in found:
                found.append(rewrite)
        return found

    def _is_usual(self, numeral: Numeral) -> bool:
        return self.usual.get(numeral.kind, True)

    def _replace(self, text: str, table: Mapping[str, str]) -> str:
        """Every whole entry of ``table`` replaced, scanning longest-first from the left, so
        a longer term (a glossary term, another alias) shields the words inside it."""
        out, i = [], 0
        while i < len(text):
            for size in self.sizes:
                piece = text[i:i + size]
                if len(piece) == size and piece in self.known and _whole(text, i, size):
                    out.append(table.get(piece, piece))
                    i += size
                    break
            else:
                out.append(text[i])
                i += 1
        return "".join(out)


def _whole(text: str, start: int, size: int) -> bool:
    """An ASCII alias matches whole words only ("HIV" not inside "HIVE")."""
    if not ASCII_WORD.match(text[start]) and not ASCII_WORD.match(text[start + size - 1]):
        return True
    before = text[start - 1] if start else " "
    after = text[start + size] if start + size < len(text) else " "
    return not ASCII_WORD.match(before) and not ASCII_WORD.match(after)
