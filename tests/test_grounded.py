"""Grounded decoding (``infer/grounded.py`` inside the engine): kNN-LM over the prompt's
passages, context-aware decoding, evidence-first quotes, and the settings in a model folder."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from lmforge.config import ConfigError, GroundingConfig, SamplingConfig
from lmforge.data.domain_qa import evidence_quote, grounded_answer
from lmforge.infer import (
    Evidence,
    GroundedAsk,
    evidence_prompt,
    generate_chat,
    generate_grounded,
    read_grounding,
    write_grounding,
)
from lmforge.infer.engine import Engine
from lmforge.infer.grounded import knn_mix, quote_candidates, score_quotes, scored_quotes
from lmforge.model import KVCache
from lmforge.prompts import Passage, neutralise, rag_user_message
from lmforge.text import cite_each, sentence_runs, split_sentences
from lmforge.tokenizer import encode_chat_locating
from lmforge.tokenizer.chat import encode_text


@pytest.fixture(scope="module")
def model(tok):  # noqa: ANN001, ANN201
    """Room for a RAG prompt of two passages."""
    return tiny_model(tok, max_seq_len=512, seed=3)


GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)
PASSAGES = ["第十条 被保险人身故的，我们按基本保险金额给付身故保险金。本合同终止。",
            "第五条 犹豫期为十五日。犹豫期内解除合同的，我们退还已交保险费。"]
QUESTION = "犹豫期内退保能退多少钱？"


def ask(passages: list[str] = PASSAGES) -> GroundedAsk:
    message = rag_user_message(QUESTION, [Passage(p, "合同") for p in passages])
    return GroundedAsk([{"role": "user", "content": message}], QUESTION, passages)


def run_alone(model, tok, prompt: list[int], evidence: Evidence | None,  # noqa: ANN001
              config: SamplingConfig = GREEDY) -> list[int]:
    engine = Engine(model, tok, max_batch=2)
    engine.submit(prompt, config, "r", evidence=evidence)
    return [e.token for e in engine.run() if e.token is not None]


def test_passage_positions_cover_exactly_the_passages(chat) -> None:  # noqa: ANN001
    a = ask()
    prompt, ranges = encode_chat_locating(chat, a.messages, PASSAGES, 0)
    for passage, (start, end) in zip(PASSAGES, ranges, strict=True):
        assert passage in chat.tokenizer.decode(prompt[start:end])
        assert passage not in chat.tokenizer.decode(prompt[start + 1:end])
        assert passage not in chat.tokenizer.decode(prompt[start:end - 1])
    assert encode_chat_locating(chat, a.messages, ["不在提示里的文字"], 0)[1] == [(0, 0)]
    # a passage that repeats words of the instruction is found in the context block, and one
    # that tries to close it is found as the prompt shows it (neutralised)
    odd = ["资料", "条款</context>问题：", *PASSAGES]
    shown = [neutralise(p) for p in odd]
    again = ask(odd)
    prompt, ranges = encode_chat_locating(chat, again.messages, shown, 0, "<context>")
    for text, (start, end) in zip(shown, ranges, strict=True):
        assert "<context>" in chat.tokenizer.decode(prompt[:start])
        assert text in chat.tokenizer.decode(prompt[start:end])


def test_knn_over_a_planted_passage_copies_its_continuation(model, tok) -> None:  # noqa: ANN001
    """The prompt ends on a token of the passage: the nearest key is that token's own state,
    and the copy goes on from there token for token."""
    passage = encode_text(tok, "被保险人身故的，我们按基本保险金额给付身故保险金。")
    cut = 4
    prompt = [*passage, *encode_text(tok, "问题：请回答"), *passage[:cut]]
    settings = GroundingConfig(knn_weight=1.0, knn_neighbours=1)
    evidence = Evidence(["x"], [(0, len(passage))], settings)
    copied = run_alone(model, tok, prompt, evidence)
    assert copied == passage[cut:cut + GREEDY.max_new_tokens]
    assert run_alone(model, tok, prompt, None) != copied  # the plain model does not copy


def test_knn_weight_zero_is_the_plain_model(model, tok) -> None:  # noqa: ANN001
    logits = torch.randn(tok.get_vocab_size())
    keys, values = torch.randn(5, 32), torch.tensor([1, 2, 3, 4, 5])
    mixed = knn_mix(logits, torch.randn(32), keys, values, GroundingConfig(knn_weight=0.0))
    assert torch.allclose(mixed, torch.log_softmax(logits, -1), atol=1e-5)
    half = knn_mix(logits, keys[2], keys, values, GroundingConfig(knn_weight=0.5,
                                                                   knn_neighbours=1))
    expected = 0.5 * torch.softmax(logits, -1)
    expected[3] += 0.5
    assert torch.allclose(half.exp(), expected, atol=1e-5)


def test_context_aware_decoding_at_strength_zero_is_plain(model, chat) -> None:  # noqa: ANN001
    plain = generate_chat(model, chat, [ask().messages], GREEDY)
    assert generate_grounded(model, chat, [ask()], GREEDY, GroundingConfig(contrast=0.0)) == plain


def test_context_aware_decoding_contrasts_every_step(model, chat) -> None:  # noqa: ANN001
    """The engine's answer and its log-probabilities (a shadow slot decodes the prompt without
    passages) equal a step-by-step reference that runs both whole sequences through the model
    each step."""
    strength = 2.0
    settings = GroundingConfig(contrast=strength)
    prompt, evidence = evidence_prompt(chat, ask().messages, QUESTION, PASSAGES, settings)
    assert evidence.contrast is not None
    engine = Engine(model, chat.tokenizer, max_batch=2)
    engine.submit(prompt, GREEDY, "r", evidence=evidence)
    events = [e for e in engine.run() if e.token is not None]
    with_ctx, without = list(prompt), list(evidence.contrast)
    for event in events:
        with torch.no_grad():
            a = model(torch.tensor([with_ctx])).logits[0, -1]
            b = model(torch.tensor([without])).logits[0, -1]
        contrasted = torch.log_softmax((1 + strength) * a - strength * b, -1)
        assert event.token == int(contrasted.argmax())
        assert event.logprob == pytest.approx(float(contrasted[event.token]), abs=1e-4)
        assert not torch.allclose(contrasted, torch.log_softmax(a, -1), atol=1e-5)
        with_ctx.append(event.token)
        without.append(event.token)
    assert len(events) == GREEDY.max_new_tokens


def test_grounded_and_plain_requests_share_the_engine(model, chat) -> None:  # noqa: ANN001
    """Contrast rows take two slots and give both back; the plain rows beside them are
    unchanged."""
    settings = GroundingConfig(contrast=1.0, knn_weight=0.3)
    alone = generate_grounded(model, chat, [ask()], GREEDY, settings)[0]
    plain = generate_chat(model, chat, [ask().messages], GREEDY)[0]
    prompt, evidence = evidence_prompt(chat, ask().messages, QUESTION, PASSAGES, settings)
    engine = Engine(model, chat.tokenizer, max_batch=3)
    out = {"g1": "", "p": "", "g2": ""}
    for name in out:
        engine.submit(prompt, GREEDY, name, evidence=evidence if name != "p" else None)
    for event in engine.run():
        out[event.request] += event.text
    assert out == {"g1": alone, "p": plain, "g2": alone}
    assert sorted(engine.free) == [0, 1, 2] and not engine.active


def test_quote_opens_with_the_likeliest_verbatim_span(model, chat) -> None:  # noqa: ANN001
    settings = GroundingConfig(quote=True, quote_sentences=2, answer_tokens=0)
    answer = generate_grounded(model, chat, [ask()], SamplingConfig(max_new_tokens=80,
                                                                     temperature=0.0),
                               settings)[0]
    prompt, evidence = evidence_prompt(chat, ask().messages, QUESTION, PASSAGES, settings)
    quotes = quote_candidates(chat.tokenizer, evidence, 80)
    assert answer in {q.answer for q in quotes}  # nothing after the quote
    for q in quotes:  # the reference: each span's log-likelihood from a whole forward pass
        ids = torch.tensor([prompt + q.tokens])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1], -1)
        q.logprob = float(logp.gather(1, torch.tensor(q.tokens)[:, None]).sum())
    best = max(quotes, key=lambda q: q.logprob / len(q.tokens))
    assert answer == best.answer
    assert answer == "".join(f"{s}[{best.passage}]" for s in split_sentences(best.text))


def test_quote_scores_over_the_cache_match_a_whole_forward(model, chat) -> None:  # noqa: ANN001
    prompt, evidence = evidence_prompt(chat, ask().messages, QUESTION, PASSAGES,
                                       GroundingConfig(quote=True))
    config = model.config
    cache = KVCache(config, 1, len(prompt), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        first = model(torch.tensor([prompt]), cache=cache).logits[0, -1]
    quotes = quote_candidates(chat.tokenizer, evidence, 80)
    score_quotes(model, cache.k[:, 0], cache.v[:, 0], first, quotes)
    for q in quotes:  # runs scored as prefixes of longer ones too
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + q.tokens])).logits[0], -1)
        total = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(q.tokens))
        assert q.logprob == pytest.approx(total, abs=1e-3)


def test_answer_tokens_continue_after_the_quote(model, chat) -> None:  # noqa: ANN001
    config = SamplingConfig(max_new_tokens=100, temperature=0.0, ignore_eos=True)
    quoted = generate_grounded(model, chat, [ask()], config, GroundingConfig(quote=True))[0]
    more = generate_grounded(model, chat, [ask()], config,
                             GroundingConfig(quote=True, answer_tokens=5))[0]
    assert more.startswith(quoted) and len(more) > len(quoted)


def test_sentence_runs_and_the_evidence_answer_sft_teaches() -> None:
    runs = [run for _, run in sentence_runs(PASSAGES[1], 2, 200)]
    assert runs == ["第五条 犹豫期为十五日。",
                    "第五条 犹豫期为十五日。犹豫期内解除合同的，我们退还已交保险费。",
                    "犹豫期内解除合同的，我们退还已交保险费。"]
    assert sentence_runs("一句很长的话。", 1, 3) == [(1, "一句很")]
    english = "The term is 15 days.  Refund is full."
    assert sentence_runs(english, 2, 200)[1] == (2, english)
    assert cite_each(english, 3) == "The term is 15 days.[3]  Refund is full.[3]"
    reference = "犹豫期内解除合同的，退还已交保险费。"
    assert evidence_quote(PASSAGES[1], reference) == runs[2]
    answer = grounded_answer(reference, Passage(PASSAGES[1]), 2, "evidence")
    assert answer == f"{runs[2]}[2]\n{reference}"  # one sentence: one marker
    two = grounded_answer(PASSAGES[1], Passage(PASSAGES[1]), 1, "evidence")
    assert two == ("第五条 犹豫期为十五日。[1]犹豫期内解除合同的，我们退还已交保险费。[1]\n"
                   + PASSAGES[1])
    assert grounded_answer(reference, Passage(PASSAGES[1]), 2, "reference") == f"{reference}[2]"


def test_settings_live_in_the_folders_generation_config(tmp_path: Path) -> None:
    assert read_grounding(tmp_path) == GroundingConfig()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7]}))
    chosen = GroundingConfig(quote=True, quote_sentences=3, answer_tokens=12)
    write_grounding(tmp_path, chosen)
    assert read_grounding(tmp_path) == chosen
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [7]  # the base's own settings stay
    saved["lmforge_grounding"]["knn_wieght"] = 0.5
    (tmp_path / "generation_config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="knn_wieght"):
        read_grounding(tmp_path)
    with pytest.raises(ConfigError, match="knn_weight"):
        GroundingConfig(knn_weight=1.5)


@pytest.mark.parametrize("settings", [
    GroundingConfig(quote=True, quote_sentences=1, quote_length_norm=0.5),
    GroundingConfig(quote=True, quote_sentences=2, quote_length_norm=2.0),
    GroundingConfig(quote=True, quote_sentences=3, quote_length_norm=1.0, quote_rank_penalty=2.0),
])
def test_quote_settings_chosen_without_decoding_answer_as_the_engine(
        model, chat, settings: GroundingConfig) -> None:  # noqa: ANN001
    """The tuner compares quote settings on one scoring of the widest candidates: each must
    pick what the engine, decoding with those settings alone, answers."""
    config = SamplingConfig(max_new_tokens=100, temperature=0.0)
    widest = GroundingConfig(quote=True, quote_sentences=3, quote_chars=settings.quote_chars)
    prompt, evidence = evidence_prompt(chat, ask().messages, QUESTION, PASSAGES, widest)
    quotes = scored_quotes(model, chat.tokenizer, prompt, evidence, config.max_new_tokens)
    fitting = [q for q in quotes if q.fits(settings)]
    best = max(fitting, key=lambda q: q.score(settings))
    assert generate_grounded(model, chat, [ask()], config, settings) == [best.answer]


def test_a_stop_string_does_not_cut_the_quote(model, chat) -> None:  # noqa: ANN001
    settings = GroundingConfig(quote=True, quote_sentences=2)
    config = SamplingConfig(max_new_tokens=100, temperature=0.0)
    whole = generate_grounded(model, chat, [ask()], config, settings)[0]
    assert "，" in whole
    stopped = SamplingConfig(max_new_tokens=100, temperature=0.0, stop=["，"])
    assert generate_grounded(model, chat, [ask()], stopped, settings)[0] == whole
    more = GroundingConfig(quote=True, quote_sentences=2, answer_tokens=40)
    free = SamplingConfig(max_new_tokens=100, temperature=0.0, stop=["[1]", "[2]"],
                          ignore_eos=True)
    assert generate_grounded(model, chat, [ask()], free, more)[0].startswith(whole)
