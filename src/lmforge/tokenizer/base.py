"""A base model's own tokenizer as the run's tokenizer, extended with the domain's terms.

A model trained by someone else only understands the ids of its own tokenizer, so with
``[model] base`` the tokenizer stage copies that tokenizer instead of training one. Domain terms
that the base cuts into several pieces ("被保险人" in three or four) may be added as whole tokens:
more text per token, and one id per concept. A term is added only when it earns its row in the
embedding: it is not already one token, it occurs in the corpus, and the base's decoder gives it
back exactly (see ``extend_exactly``). Once in the corpus is enough: the user listed the term,
and its row starts at the mean of its pieces' rows, a sound place even if training rarely moves
it; a term never matched would be a row that is never trained.

Terms are ordinary added tokens (not special): message text encoded with
``encode_special_tokens=True``, as lmforge encodes every untrusted text, still uses them.
``normalized=False`` matches them on the raw text as written, before the base's normalizer,
which would otherwise rewrite the term itself (a legacy sentencepiece ``Prepend("▁")``
normalizer turns "保险" into "▁保险", found only after a space). Such a legacy tokenizer garbles
text after any added token either way ("买了保险合同，" comes back "买了保险合同 ，"), which is why
Chinese-LLaMA merged sentencepiece models instead; here every term then fails the exactness
check and none is added. Latin terms are ``single_word`` so that "ICD" never fires inside
"ICDs", as in ``train.train_bpe``; CJK terms are not (CJK text has no word boundaries), and a
Latin term glued to Chinese characters ("买了ICD") is therefore not matched.

``added_terms.json`` is the contract with the model side: per added term its new id and its
``pieces``, the ids the base gave it, from which the new embedding rows are initialised.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models

from lmforge.atomic import atomic_dir, atomic_write_text
from lmforge.config import TokenizerConfig
from lmforge.reporting import markdown_table, write_report_pair
from lmforge.tokenizer.chat import plain_text_tokenizer
from lmforge.tokenizer.folder import load_chat_format
from lmforge.tokenizer.report import chars_per_token, held_out_groups
from lmforge.tokenizer.train import (
    iter_texts,
    read_terms,
    term_token,
    without_overlaps,
    word_like,
)

BASE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja", "generation_config.json")
ADDED_TERMS = "added_terms.json"
# Contexts a term must survive: alone, after a space, between words, in brackets, on its own
# line. The base's own decoding of each context is the reference, so a base whose decoder drops
# a leading space (sentencepiece's dummy prefix) is held to its own behaviour.
CONTEXTS = ("{}", " {}", "A {} B", "（{}）", "\n{}\n")
_BATCH = 512


def base_tokenizer(config: TokenizerConfig, corpus: Path, base: Path, out: Path
                   ) -> dict[str, Any]:
    """The tokenizer stage of a run that starts from ``base``: its tokenizer, extended with the
    word-like terms of ``config.terms_file`` no longer than ``config.max_term_chars`` (the
    rules a trained tokenizer's forced terms follow), counted on the training corpus and
    judged on the held-out domain text."""
    terms = without_overlaps([t for t in read_terms(Path(config.terms_file), config.terms_field)
                              if len(t) <= config.max_term_chars and word_like(t)])[0] \
        if config.terms_file else []
    held_out = [text for group, texts in held_out_groups(corpus / "val.jsonl").items()
                if group.endswith("/domain") for text in texts]
    template = Path(config.chat_template) if config.chat_template else None
    report = tokenizer_from_base(base, out, terms,
                                 iter_texts(corpus / "train.jsonl", config.max_train_chars),
                                 held_out, template)
    try:
        load_chat_format(out)
    except ValueError as err:
        raise ValueError(f"{err}; set tokenizer.chat_template to a .jinja file for {base}'s "
                         "conversations") from None
    return report


def tokenizer_from_base(base: Path, out: Path, terms: Sequence[str],
                        corpus_texts: Iterable[str], held_out_texts: Sequence[str],
                        chat_template: Path | None = None) -> dict[str, Any]:
    """Copy the base's tokenizer files to ``out`` (atomically), add the terms that earn a
    token, write ``added_terms.json`` and the report; return the report.

    ``corpus_texts`` is read once (a generator is fine) to count the terms; the characters per
    token before and after are measured on ``held_out_texts``, as lmforge encodes text. A
    ``chat_template`` file becomes the folder's ``chat_template.jinja``, which wins over the
    base's own template wherever templates are read."""
    base = Path(base)
    if not (base / "tokenizer.json").exists():
        raise FileNotFoundError(f"{base}: no tokenizer.json; [model] base must be a Hugging Face "
                                "model folder that carries its tokenizer")
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    offered = list(dict.fromkeys(t.strip() for t in terms if t.strip()))
    pieces = term_pieces(tok, offered)
    # a term spelled like an existing token would get that token's id, not a new row
    known = {a.content for a in tok.get_added_tokens_decoder().values()}
    single = [t for t in offered
              if len(pieces[t]) == 1 or t in known or tok.token_to_id(t) is not None]
    candidates = [t for t in offered if t not in single]
    counts = count_terms(candidates, corpus_texts)
    present = [t for t in candidates if counts[t] > 0]
    extended, inexact = extend_exactly(tok, present)
    added = [{"term": t, "id": extended.token_to_id(t), "pieces": pieces[t], "count": counts[t]}
             for t in present if t not in inexact]
    report = {
        "base": str(base),
        "vocab_size_before": tok.get_vocab_size(),
        "vocab_size_after": extended.get_vocab_size(),
        "terms": {"offered": len(offered), "single_token": len(single),
                  "absent": len(candidates) - len(present), "inexact": len(inexact),
                  "added": len(added), "inexact_examples": inexact[:20]},
        "held_out": {"docs": len(held_out_texts), "chars": sum(map(len, held_out_texts)),
                     "chars_per_token_before": plain_chars_per_token(tok, held_out_texts),
                     "chars_per_token_after": plain_chars_per_token(extended, held_out_texts)},
    }
    write_folder(base, out, extended, added, report, chat_template)
    return report


def write_folder(base: Path, out: Path, extended: Tokenizer, added: list[dict[str, Any]],
                 report: dict[str, Any], chat_template: Path | None = None) -> None:
    """The base's files as they are, or, with terms added, the extended tokenizer.json and
    tokenizer_config.json; ``added_terms.json`` (empty when none) and the report."""
    with atomic_dir(out) as tmp:
        for name in BASE_FILES:
            if (base / name).exists():
                shutil.copy2(base / name, tmp / name)
        if added:
            atomic_write_text(tmp / "tokenizer.json", extended.to_str(pretty=True))
            if (base / "tokenizer_config.json").exists():
                write_tokenizer_config(base / "tokenizer_config.json", tmp, extended)
        if chat_template is not None:
            shutil.copy2(chat_template, tmp / "chat_template.jinja")
        rows = ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in added)
        atomic_write_text(tmp / ADDED_TERMS, f"[\n{rows}\n]\n" if added else "[]\n")
        write_report_pair(tmp, report, report_markdown(report))


def term_pieces(tok: Tokenizer, terms: Sequence[str]) -> dict[str, list[int]]:
    """The base's ids for each term, without a leading piece that adds nothing to the decoded
    text: the dummy-prefix "▁" a sentencepiece-style tokenizer puts before a text (mid-sentence
    the term has none). Byte-fallback pieces also decode to nothing alone, but not in sequence."""
    pieces = {}
    for term, encoding in zip(terms, plain_text_tokenizer(tok).encode_batch(list(terms),
                                                             add_special_tokens=False),
                              strict=True):
        ids = encoding.ids
        while len(ids) > 1 and tok.decode(ids[1:]) == tok.decode(ids):
            ids = ids[1:]
        pieces[term] = ids
    return pieces


def count_terms(terms: Sequence[str], texts: Iterable[str]) -> Counter[str]:
    """How often each term would be matched in ``texts``: the added-token matcher itself
    (leftmost-longest, so "保险" inside "保险合同" does not count), in Rust, over batches."""
    matcher = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    matcher.add_tokens([term_token(t) for t in terms])
    by_id = {matcher.token_to_id(t): t for t in terms}
    counts: Counter[str] = Counter(dict.fromkeys(terms, 0))
    for batch in batches(texts):
        for encoding in matcher.encode_batch(batch, add_special_tokens=False):
            counts.update(by_id[i] for i in encoding.ids if i in by_id)
    return counts


def batches(texts: Iterable[str]) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, _BATCH)):
        yield batch


def extend_exactly(tok: Tokenizer, terms: Sequence[str]) -> tuple[Tokenizer, list[str]]:
    """``tok`` with the terms added, leaving out (and returning) those its decoder cannot give
    back exactly: a byte-level decoder maps an added token's characters through its byte
    alphabet when all of them lie in it, so "café" would come back as "caf\\ufffd"."""
    left_out: list[str] = []
    while True:
        extended = Tokenizer.from_str(tok.to_str())
        kept = [t for t in terms if t not in left_out]
        extended.add_tokens([term_token(t) for t in kept])
        failed = exact_failures(tok, extended, kept)
        if not failed:
            return extended, left_out
        left_out += failed


def exact_failures(tok: Tokenizer, extended: Tokenizer, terms: Sequence[str]) -> list[str]:
    """Terms that are not one id alone, are not used in every context, or change what a
    context decodes to."""
    texts = [c.format(t) for t in terms for c in CONTEXTS]
    before = [tok.decode(e.ids) for e in
              plain_text_tokenizer(tok).encode_batch(texts, add_special_tokens=False)]
    after = plain_text_tokenizer(extended).encode_batch(texts, add_special_tokens=False)
    failed = []
    for i, term in enumerate(terms):
        term_id = extended.token_to_id(term)
        rows = range(i * len(CONTEXTS), (i + 1) * len(CONTEXTS))
        alone = after[rows[0]].ids
        if (alone != [term_id] or extended.decode(alone) != term
                or any(term_id not in after[r].ids or extended.decode(after[r].ids) != before[r]
                       for r in rows)):
            failed.append(term)
    return failed


def write_tokenizer_config(source: Path, folder: Path, extended: Tokenizer) -> None:
    """The base's tokenizer_config.json with the new ids in ``added_tokens_decoder``, which
    transformers reads beside tokenizer.json, so both agree on every id."""
    config = json.loads(source.read_text(encoding="utf-8"))
    decoder = config.setdefault("added_tokens_decoder", {})
    # every added token, the base's own included: a decoder listing only the new terms would
    # be all transformers registers, and the base's special tokens would become plain text
    for token_id, token in sorted(extended.get_added_tokens_decoder().items()):
        decoder[str(token_id)] = {"content": token.content, "lstrip": token.lstrip,
                                  "normalized": token.normalized, "rstrip": token.rstrip,
                                  "single_word": token.single_word, "special": token.special}
    atomic_write_text(folder / "tokenizer_config.json",
                      json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def plain_chars_per_token(tok: Tokenizer, texts: Sequence[str]) -> float:
    """Characters per token with the text encoded as lmforge encodes untrusted text."""
    return chars_per_token(plain_text_tokenizer(tok), list(texts))


def added_term_pieces(folder: Path) -> dict[int, list[int]]:
    """New id -> the base's ids for that term, from a tokenizer folder's added_terms.json:
    what the model side needs to grow and initialise its embedding rows."""
    path = Path(folder) / ADDED_TERMS
    if not path.exists():
        raise FileNotFoundError(f"{path}: no added terms; the tokenizer was not built from a base")
    try:
        return {int(e["id"]): [int(p) for p in e["pieces"]]
                for e in json.loads(path.read_text(encoding="utf-8"))}
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: expected a list of {{term, id, pieces}} objects") from None


def report_markdown(report: dict[str, Any]) -> str:
    t, h = report["terms"], report["held_out"]
    inexact = ", ".join(t["inexact_examples"]) or "none"
    return "\n".join([
        "# Tokenizer report", "",
        f"The base's tokenizer ({report['base']}), vocabulary {report['vocab_size_before']:,} "
        f"-> {report['vocab_size_after']:,}.", "",
        "## Domain terms", "",
        markdown_table(["offered", "already one token", "never matched in the corpus",
                        "not decoded exactly", "added"],
                       [[t["offered"], t["single_token"], t["absent"], t["inexact"],
                         t["added"]]]), "",
        f"Not decoded exactly by the base's decoder: {inexact}.", "",
        "## Characters per token on held-out text", "",
        markdown_table(["docs", "chars", "base", "extended"],
                       [[h["docs"], h["chars"], h["chars_per_token_before"],
                         h["chars_per_token_after"]]]),
    ])
