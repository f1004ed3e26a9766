"""Synthetic questions for every passage: (question, passage) pairs to train the domain
embedder and the reranker on documents nobody wrote questions for.

Templates over the passage's own sentences, in the shapes users ask (counted on the labelled
insurance questions: 如果…会怎样？ …是否赔偿？ …有哪些？ 什么是X？ …多长时间…？):

- a definition ("X指…", "X：…"): 什么是X？ X的定义是什么？
- a condition (若/如果/在…时/…的，) with what its consequence decides: 如果…，保险公司是否赔偿？
- a list it introduces (下列…之一：): the sentence asking 哪些
- a period or amount (三十日内, 百分之五十): its clause asking 多长时间 / 多少
- what it leaves out (…不在保障范围内): …在保障范围内吗？
- what a party must or may do (投保人应当…, 您可以…): 我可以…吗？
- the clause's heading and the glossary terms it is about: X是怎么规定的？ X是多久？

Each is put in the user's voice (我们/本公司/保险人 -> 保险公司, 您 -> 我), without clause numbers,
brackets or cross-references, and about half of them with Arabic numerals and 天 (users write
"30天" where the clause has "三十日"; ``expand.normalise_numbers``). A generative model would
vary the wording more, but needs a GPU per corpus and may ask what the passage does not
answer; a template question is answered by its passage by construction. English passages get
English questions from a few templates.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence

from lmforge.rag.expand import normalise_numbers, numerals
from lmforge.text import split_sentences

VOICE = ((re.compile(r"我们|本公司|(?<!被)保险人|本保险人"), "保险公司"), (re.compile(r"您"), "我"))
CLAUSE_NUMBER = re.compile(
    r"^\s*(?:第[零〇一二两三四五六七八九十百千\d]+(?:条|章|节|款|部分)|[（(]?\d+(?:\.\d+)*[)）.、]*"
    r"|[一二三四五六七八九十]+[、.])\s*")
LEAD = re.compile(r"^[^\w\u4e00-\u9fff]*(?:或者|或|但|且|并且|同时|另外|此外|其中)?\s*"
                  r"(?:\d+(?:\.\d+)*(?:[、.）)]|\s)|[（(][\d一二三四五六七八九十]+[）)])?\s*")
# (a list item's number, a "but", what is left of a mangled bracket)
HEADING = re.compile(r"^(?P<h>[^\s，。；：:！？（()）“”]{2,24})(?P<colon>\s*[：:]\s*|\s+)(?=\S)")
BRACKETS = re.compile(r"(?<!第)[（(][^（）()]{0,30}[）)]|\[[^\]]{0,10}\]")  # "（见 7.6）"
DROP = re.compile(r"上述|按照?本合同(?:的)?约定|本合同约定的|根据本合同|\s+")
DEFINITION = re.compile(r"^(?P<x>[^\s，。；：:（()）“”]{2,24}?)(?:[：:]\s*)?(?:是)?(?<!所)"
                        r"指(?!定|的)")
CONDITION = (
    re.compile(r"^(?:若|如果|假如|倘若|如(?=[被投我您受本保因]))(?P<c>[^。；，]{4,40})，(?P<r>[^。；]{4,})"),
    re.compile(r"^(?:在|当)(?P<c>[^。；，]{4,40}?)(?:时|后|期间)，(?P<r>[^。；]{4,})"),
    re.compile(r"^(?!对|凡|其|该|此|如|若)(?P<c>[^。；，]{4,40})的，(?P<r>[^。；]{4,})"),
)
PARTY = re.compile(r"^(?:投保人|被保险人|受益人|申请人|我们|本公司|保险人|您)")
ASK = (  # what a consequence decides -> how users ask about it ({s}: who it binds)
    (re.compile(r"不承担|不负|不予|免除|不赔|除外"), ("保险公司是否赔偿？", "保险公司还会赔吗？",
                                               "保险公司会承担责任吗？")),
    (re.compile(r"给付|赔偿|承担"), ("保险公司会怎么赔？", "保险公司如何给付保险金？")),
    (re.compile(r"终止|中止|解除|失效|无效"), ("合同会怎样？", "合同还有效吗？")),
    (re.compile(r"有权|可以"), ("{s}可以怎么做？", "{s}有什么权利？")),
    (re.compile(r"应当|应|须|需"), ("{s}需要怎么做？", "{s}应该怎么办？")),
)
OTHERWISE = ("会怎样？", "会有什么后果？")
LIST = re.compile(r"(?:下列|以下)(?:全部|所有|任一|任何一项|至少一项)?"
                  r"(?P<what>(?:保险)?[\u4e00-\u9fff]{2})(?:之一)?")  # nouns: mostly 2 characters
HOW_MUCH = {"日": "多长时间", "个工作日": "多长时间", "小时": "多长时间", "个月": "多长时间",
            "周": "多长时间", "年": "多少年", "周岁": "多少岁", "%": "多少", "倍": "几倍",
            "元": "多少", "万元": "多少", "项": "几项"}
TERM_ASK = (  # how a term's ending is asked about
    (("期", "期间", "期限"), ("{t}是多久？", "{t}有多长时间？", "{t}是怎么规定的？")),
    (("保险金",), ("{t}怎么给付？", "什么情况下可以获得{t}？", "{t}的给付条件是什么？")),
    (("金额", "比例", "利率", "限额", "费"), ("{t}是多少？", "{t}怎么计算？")),
    (("责任", "条款", "情形", "材料"), ("{t}有哪些？", "{t}包括什么？")),
    (("",), ("什么是{t}？", "{t}是什么意思？", "{t}是怎么规定的？", "合同里的{t}指什么？")),
)
TERMS_ASKED = 2  # the longest terms of a passage only: "被保险人" is in every clause
SALIENT = 30  # the opening characters of a passage: its heading, what it defines
LONGEST = 60  # characters (a third of it in English words); users' questions are 10-40
UNCOVERED = re.compile(r"^(?:所有|对于|对|凡)?(?P<x>[^，。；：]{4,40}?)(?:均|都|也|亦)?"
                       r"(?:不在(?:本合同)?的?保障范围内|不属于(?:本合同)?的?保险责任|不予赔偿"
                       r"|不承担[^，。；]{0,12}责任)")
MAY = re.compile(r"^(?P<who>(?:投保人|被保险人|受益人|申请人|我们|本公司|保险人|您)(?:或者?"
                 r"(?:投保人|被保险人|受益人))?)(?P<may>应当|应|须|必须|需要|可以|有权)"
                 r"(?P<what>[^，。；：]{4,24})(?:[，。；：]|$)")
KINDS = ("definition", "condition", "amount", "list", "cover", "may", "heading", "term")
ENGLISH_IF = re.compile(r"^(?:if|when|where)\s+(?P<c>[^,;.]{8,100}),", re.IGNORECASE)
ENGLISH_MAY = re.compile(r"^(?:you|the policyholder)\s+(?P<may>may|can|must|shall|should)\s+"
                         r"(?P<what>[^,;.]{4,80})", re.IGNORECASE)
ENGLISH_DEFINITION = re.compile(r"^[\"“]?(?P<x>[A-Za-z][\w\s\-]{2,40}?)[\"”]?\s+"
                                r"(?:means|refers to|is defined as)\b")

Candidate = tuple[str, str]  # (kind, question)


def synthetic_questions(text: str, terms: Sequence[str], n: int, seed: int | str) -> list[str]:
    """Up to ``n`` distinct questions that ``text`` answers, the same for the same seed."""
    rng = random.Random(f"{seed}:{hashlib.sha1(text.encode()).hexdigest()}")
    english = _is_english(text)
    make = _english_candidates if english else _chinese_candidates
    sentences = {_bare(s) for s in split_sentences(text)}
    by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, question in make(text, terms, rng):
        if (_short(question, english) and _bare(question) not in sentences
                and question not in by_kind[kind]):
            by_kind[kind].append(question)
    for questions in by_kind.values():
        rng.shuffle(questions)
    picked: list[str] = []
    while len(picked) < n and any(by_kind.values()):
        for kind in KINDS:  # one of each kind in turn: varied shapes before many of one
            if by_kind[kind] and len(picked) < n:
                question = by_kind[kind].pop()
                if question not in picked:
                    picked.append(question)
    return picked


def _short(question: str, english: bool) -> bool:
    return len(question.split()) <= LONGEST // 3 if english else len(question) <= LONGEST


def _is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) > 0.7 * len(letters)


def _bare(text: str) -> str:
    return re.sub(r"[\s，。；：！？,.;:!?]", "", text)


def _chinese_candidates(text: str, terms: Sequence[str], rng: random.Random) -> Iterator[Candidate]:
    body = BRACKETS.sub("", CLAUSE_NUMBER.sub("", text, count=1))
    heading = HEADING.match(body)
    # a heading as a topic: once, though a PDF repeated it ("诉讼时效诉讼时效"), without "包括"
    topic = re.sub(r"(.{2,12}?)\1+", r"\1", heading["h"]) if heading else ""
    subject = re.sub(r"(?:为|是|如下|包括)$", "", topic)
    if heading:
        body = body[heading.end():]
        if re.match(r"(?:是)?指", body) or (heading["colon"].strip() and "的" not in topic
                                            and not topic.endswith(("为", "是", "如下", "包括"))):
            yield from _definition(topic, text, rng)
            topic = ""
    for sentence in split_sentences(body):
        sentence = LEAD.sub("", sentence, count=1)
        definition = DEFINITION.match(sentence)
        if definition:
            yield from _definition(definition["x"], text, rng)
        yield from _conditions(sentence, rng)
        yield from _lists(sentence, topic, rng)
        yield from _amounts(sentence, rng)
        yield from _cover(sentence, rng)
        yield from _may(sentence, rng)
    if topic:
        yield "heading", _heading(topic, rng)
    for term in _terms_in(text, terms)[:TERMS_ASKED]:
        templates = next(t for ends, t in TERM_ASK if term.endswith(ends))
        asked = rng.choice(templates).format(t=term)
        in_passing = subject and term not in subject and term not in text[:SALIENT]
        yield "term", f"关于{subject}，{asked}" if in_passing else asked


def _heading(topic: str, rng: random.Random) -> str:
    if topic.startswith(("如何", "怎样", "什么", "哪些")):
        return topic + "？"
    said = re.match(r"(?P<t>.+?)(?:为|是|如下|包括)$", topic)  # "本保险合同的保险标的为："
    if said:
        return said["t"] + rng.choice(("是什么？", "有哪些？"))
    return rng.choice(("{t}是怎么规定的？", "关于{t}，合同是怎么规定的？", "{t}有哪些规定？")
                      ).format(t=topic)


def _definition(term: str, text: str, rng: random.Random) -> Iterator[Candidate]:
    templates = ["什么是{x}？", "{x}是指什么？", "{x}的定义是什么？"]
    if re.search(r"须满足|条件|符合", text):
        templates.append("{x}需要满足哪些条件？")
    yield "definition", rng.choice(templates).format(x=term)


def _conditions(sentence: str, rng: random.Random) -> Iterator[Candidate]:
    """如果 + the condition + a question about what the consequence decides (the earliest
    keyword in it: "投保人应当…支付" binds the policyholder, it pays nothing)."""
    for pattern in CONDITION:
        match = pattern.match(sentence)
        if match and not re.search("下列|以下", match["c"]):  # "因下列情形之一…的": a list's
            consequence = match["r"]
            found = [(m.start(), i) for i, (word, _) in enumerate(ASK)
                     if (m := word.search(consequence))]
            asks = ASK[min(found)[1]][1] if found else OTHERWISE
            party = PARTY.match(consequence)
            who = _voice(party[0], rng) if party else "我"
            yield "condition", f"如果{_voice(match['c'], rng)}，{rng.choice(asks).format(s=who)}"
            return


def _lists(sentence: str, topic: str, rng: random.Random) -> Iterator[Candidate]:
    """The sentence that opens a list, asking which items it has."""
    head, colon, _ = sentence.replace(":", "：").partition("：")
    match = LIST.search(head)
    if not match or not colon:
        return
    asked = _voice(LIST.sub(lambda m: "哪些" + m["what"], head), rng)
    if asked.startswith(("须", "需", "必须", "应")) and topic:
        asked = topic + asked
    yield "list", asked + "？"


def _amounts(sentence: str, rng: random.Random) -> Iterator[Candidate]:
    """The clause holding a period or amount, asking for it (with the clause before it when
    that one names who or when: "…收到申请后，将在多长时间内作出核定？")."""
    pieces = [p for p in re.split(r"[，；。：:]", sentence) if p.strip()]
    for i, piece in enumerate(pieces):
        found = next(((m, n) for m, n in numerals(piece) if n.unit in HOW_MUCH
                      and 1 < n.value < 1000  # no "一项", no year
                      and not piece.startswith("或", m.end())  # no "一项或多项"
                      and not piece[:m.start()].endswith(("、", "年", "月"))), None)  # no date,
        # no "18、19、20周岁"
        if found is None or piece.endswith("的"):  # "…180日内身故的": a condition's
            continue
        match, numeral = found
        before = piece[:match.start()].rstrip()
        asked = HOW_MUCH[numeral.unit]
        if before.endswith(("为", "是")) and asked == "多长时间":
            asked = "多久"
        rest = piece[match.end():]
        if rest.strip() == "内" and i + 1 < len(pieces):  # "…协议后10日内，履行给付义务"
            rest += pieces[i + 1]
        clause = before + asked + rest
        if i and len(pieces[i - 1]) + len(clause) <= LONGEST:
            clause = f"{pieces[i - 1]}，{clause}"
        if len(clause) >= 8:  # "4%给付年金" asks nothing
            yield "amount", _voice(clause, rng) + "？"
        return


def _cover(sentence: str, rng: random.Random) -> Iterator[Candidate]:
    """What a clause leaves out, asked the way users ask whether it is covered."""
    match = UNCOVERED.match(sentence)
    if match and not LIST.search(match["x"]) and not PARTY.match(match["x"]):
        asked = rng.choice(("{x}在保障范围内吗？", "{x}是否在保障范围内？", "{x}，保险公司赔吗？"))
        yield "cover", asked.format(x=_voice(match["x"], rng))


def _may(sentence: str, rng: random.Random) -> Iterator[Candidate]:
    """What a party must or may do, asked as a yes/no question: "我可以…吗？"."""
    match = MAY.match(sentence)
    if match:
        who, what = _voice(match["who"], rng), _voice(match["what"], rng)
        if match["may"] in ("可以", "有权"):
            yield "may", rng.choice((f"{who}可以{what}吗？", f"{who}是否有权{what}？"))
        else:
            yield "may", rng.choice((f"{who}是否需要{what}？", f"{who}必须{what}吗？"))


def _voice(text: str, rng: random.Random) -> str:
    """A clause as a user says it: no cross-references ("上述", "按本合同约定"), the insurer
    as 保险公司, the policyholder as 我, and, half the time, numbers in Arabic digits with 天
    for 日."""
    text = DROP.sub("", text)
    for pattern, word in VOICE:
        text = pattern.sub(word, text)
    if rng.random() < 0.5:
        text = re.sub(r"(?<![月\d])(\d+)日", r"\1天", normalise_numbers(text))
    return re.sub(r"^[^\w\u4e00-\u9fff]+", "", text).strip("，、 ")


def _terms_in(text: str, terms: Sequence[str]) -> list[str]:
    """Glossary terms the passage is about, most salient first: said more than once or in
    its opening words (a term mentioned in passing is in hundreds of clauses, and a question
    about it is no question about this one), longer first, none inside another found."""
    found: list[str] = []
    clean = {t.strip("“”\"《》 ") for t in terms}  # a glossary may quote its terms: "“被保险人”"
    for term in sorted({t for t in clean if len(t) >= 2 and not t.isdigit()},
                       key=lambda t: (-len(t), t)):
        salient = text.count(term) > 1 or term in text[:SALIENT]
        if salient and not any(term in longer for longer in found):
            found.append(term)
    return found


def _english_candidates(text: str, terms: Sequence[str],
                        rng: random.Random) -> Iterator[Candidate]:
    for sentence in split_sentences(CLAUSE_NUMBER.sub("", text, count=1)):
        definition = ENGLISH_DEFINITION.match(sentence)
        if definition:
            yield "definition", f"What does {_lower_first(definition['x'].strip())} mean?"
        condition = ENGLISH_IF.match(sentence)
        if condition:
            said = _english_voice(condition["c"])
            yield "condition", rng.choice((f"What happens if {said}?", f"Am I covered if {said}?"))
        may = ENGLISH_MAY.match(sentence)
        if may:
            what = _english_voice(may["what"])
            may_do = may["may"].lower() in ("may", "can")
            yield "may", f"Can I {what}?" if may_do else f"Do I have to {what}?"
    for term in _terms_in(text.lower(), [t.lower() for t in terms])[:TERMS_ASKED]:
        yield "term", rng.choice(("What is {t}?", "How does the policy define {t}?",
                                  "What does the contract say about {t}?")).format(t=term)


def _lower_first(text: str) -> str:
    first = text.split()[0]
    return text if len(first) > 1 and first.isupper() else text[:1].lower() + text[1:]  # NYHA


def _english_voice(text: str) -> str:
    for pattern, word in ((r"\byou\b", "I"), (r"\byour\b", "my"), (r"\b(?:we|us)\b", "the insurer"),
                          (r"\bour\b", "the insurer's")):
        text = re.sub(pattern, word, text, flags=re.IGNORECASE)
    return text.strip()
