"""Sampling and generation: filters, penalties, stops across token boundaries, UTF-8 streaming,
batching that changes nothing, and caches as long as the answer needs."""

from typing import Any

import pytest
import torch
from conftest import tiny_model

from lmforge.config import SamplingConfig
from lmforge.infer import ChatSession, Engine, generate, next_tokens, stream_generate
from lmforge.infer.sampling import apply_repetition_penalty, filter_top_k_top_p
from lmforge.model import Transformer
from lmforge.tokenizer import encode_chat


def test_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 crosses it -> keep two
    assert torch.isinf(filter_top_k_top_p(logits, 0, 0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logits, 0, 0.4)).tolist() == [[False, True, True, True]]


def test_repetition_penalty_matches_the_ctrl_rule() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2]])
    greedy = SamplingConfig(temperature=0.0)
    assert next_tokens(logits, torch.empty(1, 0, dtype=torch.long), greedy, None).item() == 1
    config = SamplingConfig(temperature=1.0, seed=5)
    draws = [next_tokens(torch.zeros(1, 50), torch.empty(1, 0, dtype=torch.long), config,
                         torch.Generator().manual_seed(5)).item() for _ in range(2)]
    assert draws[0] == draws[1]


def test_batched_generation_equals_one_by_one(model: Transformer, chat) -> None:  # noqa: ANN001
    prompts = ["被保险人", "To be, or not to be", "保"]
    config = SamplingConfig(max_new_tokens=8, temperature=0.0)
    batched = generate(model, chat, prompts, config)
    alone = [generate(model, chat, [p], config)[0] for p in prompts]
    assert batched == alone


def test_stop_string_across_token_boundaries(model: Transformer, tok, chat) -> None:  # noqa: ANN001
    free = generate(model, chat, ["To be"], SamplingConfig(max_new_tokens=20, temperature=0.0))[0]
    assert len(free) > 4
    stop = free[2:5]  # three characters that likely span a token boundary
    deltas = list(stream_generate(model, chat, [tok.encode("To be").ids],
                                  SamplingConfig(max_new_tokens=20, temperature=0.0,
                                                 stop=[stop])))
    text = "".join(d.text for d in deltas)
    assert text == free[: free.find(stop)]
    assert deltas[-1].finished == "stop"


def test_streaming_never_splits_a_character(tok) -> None:  # noqa: ANN001
    from lmforge.infer.detokenize import RowText

    row = RowText([])
    text = "保险"
    pieces = []
    for token in tok.encode(text).ids:
        row.ids.append(token)
        visible, _ = row.visible(tok)
        piece = row.streamable(visible)
        row.sent += len(piece)
        pieces.append(piece)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    byte_tokens = [tok.token_to_id(c) for c in tok.pre_tokenizer.pre_tokenize_str("险")[0][0]]
    row = RowText([])
    row.ids = byte_tokens[:1]
    assert row.streamable(row.visible(tok)[0]) == ""  # the first byte of a 3-byte character


def test_length_limit_and_context_guard(model: Transformer, chat) -> None:  # noqa: ANN001
    deltas = list(stream_generate(model, chat, [[5, 6]], SamplingConfig(max_new_tokens=3,
                                                                       temperature=0.0)))
    assert deltas[-1].finished in ("length", "stop")
    assert len(deltas) <= 3
    with pytest.raises(ValueError, match="exceeds the model's context"):
        list(stream_generate(model, chat, [[5] * 100], SamplingConfig(max_new_tokens=64)))


def test_a_chat_reply_caches_its_prompt_and_answer_only(tok, chat,  # noqa: ANN001
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An imported Llama 3.1 has a context of 131072: a cache that long for every reply of a
    1B model is ~8.6 GB in fp32. The cache holds the prompt and the answer; a conversation
    longer than the context is still trimmed to it, its prompt cut from the left."""
    import lmforge.infer.chat

    engines: list[Engine] = []

    class Kept(Engine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr(lmforge.infer.chat, "Engine", Kept)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.0)
    session = ChatSession(tiny_model(tok, max_seq_len=100_000), chat, sampling, "你是保险助手。")
    "".join(session.reply("你好"))
    prompt = encode_chat(chat, session.messages()[:2], add_generation_prompt=True)
    assert engines[-1].cache.k.shape[3] == len(prompt) + 5
    short = ChatSession(tiny_model(tok, max_seq_len=48), chat, sampling)
    "".join(short.reply("请详细解释一下保险合同中的犹豫期条款和退保规则。" * 3))
    assert len(encode_chat(chat, short.messages()[:1], add_generation_prompt=True)) > 48
    assert engines[-1].cache.k.shape[3] == 48


def test_min_p_and_openai_penalties() -> None:
    from lmforge.infer.sampling import apply_presence_frequency, filter_min_p

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.06, 0.04]]))
    assert torch.isinf(filter_min_p(logits, 0.1)).tolist() == [[False, False, True, True]]
    out = apply_presence_frequency(torch.zeros(1, 4), torch.tensor([[1, 1, 3]]), 0.5, 0.25)
    assert out.tolist() == [[0.0, -1.0, 0.0, -0.75]]  # token 1: 0.5 + 2 x 0.25; token 3: 0.75


def test_stop_token_ids_end_a_row(model: Transformer, tok, chat) -> None:  # noqa: ANN001
    free = list(stream_generate(model, chat, [tok.encode("To be").ids],
                                SamplingConfig(max_new_tokens=10, temperature=0.0)))
    stopper = free[3].token
    assert stopper is not None
    stopped = list(stream_generate(model, chat, [tok.encode("To be").ids],
                                   SamplingConfig(max_new_tokens=10, temperature=0.0,
                                                  stop_token_ids=[stopper])))
    first = next(i for i, d in enumerate(free) if d.token == stopper)
    assert len(stopped) == first + 1 and stopped[-1].finished == "stop"


def test_beam_search(model: Transformer, tok, chat) -> None:  # noqa: ANN001
    from lmforge.infer.beam import beam_search

    prompt = tok.encode("被保险人").ids
    greedy = [d.token for d in stream_generate(model, chat, [prompt],
                                               SamplingConfig(max_new_tokens=6, temperature=0))]
    one = beam_search(model, chat, prompt, beams=1, max_new_tokens=6, length_penalty=0.0)
    assert one[0].tokens == greedy[: len(one[0].tokens)]
    four = beam_search(model, chat, prompt, beams=4, max_new_tokens=6, length_penalty=0.0)
    assert len(four) == 4
    assert four[0].logprob >= one[0].logprob - 1e-5  # a wider search never finds worse

    def logprob(tokens: list[int]) -> float:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + tokens])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        return sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens))

    assert four[0].logprob == pytest.approx(logprob(four[0].tokens), abs=1e-3)


def test_incremental_decoding_equals_full_decoding(tok) -> None:  # noqa: ANN001
    from lmforge.infer.detokenize import RowText

    text = "保险合同的犹豫期为15天。Insurance 条款 ✓ 龘"
    byte_ids = [tok.token_to_id(c) for c in tok.pre_tokenizer.pre_tokenize_str(text)[0][0]
                if tok.token_to_id(c) is not None]
    for ids in (tok.encode(text).ids, byte_ids, byte_ids[1:]):  # the last: starts mid-character
        row = RowText([])
        for i, token in enumerate(ids):
            row.ids.append(token)
            assert row.decode(tok) == tok.decode(ids[: i + 1])
