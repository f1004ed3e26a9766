"""The continuous-batching engine: requests joining and leaving mid-flight change nothing."""


import pytest
import torch

from lmforge.config import ModelConfig, SamplingConfig
from lmforge.infer import generate
from lmforge.infer.engine import Engine
from lmforge.model import Transformer

PROMPTS = ["被保险人", "To be, or not to be", "保", "第一回 甄士隐梦幻识通灵"]


def collect(engine: Engine, arrivals: dict[int, list[tuple[str, str]]], tok,  # noqa: ANN001
            config: SamplingConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    step = 0
    while engine.busy or any(s >= step for s in arrivals):
        for name, prompt in arrivals.pop(step, []):
            engine.submit(tok.encode(prompt).ids, config, name)
            out[name] = ""
        for event in engine.step():
            out[event.request] += event.text
        step += 1
    return out


def test_staggered_requests_match_one_by_one(model: Transformer, tok, chat) -> None:  # noqa: ANN001
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    alone = {p: generate(model, chat, [p], config)[0] for p in PROMPTS}
    engine = Engine(model, tok, max_batch=2)  # fewer slots than requests: some must wait
    arrivals = {0: [("a", PROMPTS[0])], 3: [("b", PROMPTS[1]), ("c", PROMPTS[2])],
                5: [("d", PROMPTS[3])]}
    out = collect(engine, arrivals, tok, config)
    assert out == {"a": alone[PROMPTS[0]], "b": alone[PROMPTS[1]], "c": alone[PROMPTS[2]],
                   "d": alone[PROMPTS[3]]}
    assert not engine.active and len(engine.free) == 2


def test_seeded_sampling_is_per_request(model: Transformer, tok) -> None:  # noqa: ANN001
    config = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=11)
    first = collect(Engine(model, tok, max_batch=4), {0: [("x", PROMPTS[0])]}, tok, config)
    crowded = collect(Engine(model, tok, max_batch=4),
                      {0: [("y", PROMPTS[1]), ("x", PROMPTS[0])], 1: [("z", PROMPTS[2])]},
                      tok, config)
    assert crowded["x"] == first["x"]


def test_events_finish_every_request_once(model: Transformer, tok) -> None:  # noqa: ANN001
    engine = Engine(model, tok, max_batch=3, max_len=32)
    engine.submit(tok.encode("保险").ids, SamplingConfig(max_new_tokens=5, temperature=0.0), "ok")
    engine.submit(tok.encode("保险" * 20).ids, SamplingConfig(max_new_tokens=20), "long")
    finished = [e for e in engine.run() if e.finished]
    reasons = {e.request: e.finished for e in finished}
    assert len(finished) == 2
    assert reasons["long"] == "context_length_exceeded"
    assert reasons["ok"] in ("length", "stop")


def test_int8_weights_keep_logits_close_and_cut_memory(tok) -> None:  # noqa: ANN001
    import torch.nn.functional as F

    from lmforge.model.quant import quantize_linears

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.get_vocab_size(), dim=64, n_layers=2, n_heads=4,
                         n_kv_heads=2)
    model = Transformer(config).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(tokens).logits
        before, after = quantize_linears(model, "int8")
        quantized = model(tokens).logits
    assert after / before < 0.27  # int8 + one fp32 scale per row, against fp32
    nll = [F.cross_entropy(x[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).item()
           for x in (full, quantized)]
    assert abs(nll[0] - nll[1]) < 0.01  # perplexity changes by well under 1%
    assert (quantized.argmax(-1) == full.argmax(-1)).float().mean() > 0.95


def test_logprobs_and_echo_match_a_full_forward(model: Transformer, tok) -> None:  # noqa: ANN001
    prompt = tok.encode("被保险人在保险期间内").ids
    engine = Engine(model, tok, max_batch=1)
    engine.submit(prompt, SamplingConfig(max_new_tokens=4, temperature=0.0, logprobs=3), "r",
                  echo=True)
    events = list(engine.run())
    generated = [e.token for e in events if e.token is not None]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0]
    logp = torch.log_softmax(logits, -1)
    expected_prompt = [logp[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    assert events[0].prompt_logprobs is not None
    assert events[0].prompt_logprobs[0] is None
    assert events[0].prompt_logprobs[1:] == pytest.approx(expected_prompt, abs=1e-4)
    for i, event in enumerate(events):
        position = len(prompt) - 1 + i
        assert event.logprob == pytest.approx(logp[position, generated[i]].item(), abs=1e-4)
        assert len(event.top_logprobs) == 3
        assert event.top_logprobs[0][0] == generated[i]  # greedy picks the top token


def test_overflowing_prompts_are_rejected_or_truncated(model: Transformer, tok) -> None:  # noqa: ANN001
    long_prompt = tok.encode("保险合同" * 100).ids
    assert len(long_prompt) > 48
    config = SamplingConfig(max_new_tokens=8, temperature=0.0)
    rejecting = Engine(model, tok, max_len=48)
    rejecting.submit(long_prompt, config, "r")
    assert [e.finished for e in rejecting.run()] == ["context_length_exceeded"]
    truncating = Engine(model, tok, max_len=48, overflow="truncate")
    truncating.submit(long_prompt, config, "t", echo=True)
    events = list(truncating.run())
    assert events[0].prompt_logprobs is not None and len(events[0].prompt_logprobs) == 40
    assert events[-1].finished in ("length", "stop")


def test_terminal_chat_commands_and_history(model: Transformer, chat) -> None:  # noqa: ANN001
    import io

    from lmforge.infer.chat import ChatSession, terminal_chat

    session = ChatSession(model, chat, SamplingConfig(max_new_tokens=6, temperature=0.0),
                          system="你是保险助手。")
    lines = iter(["你好", "什么是犹豫期？", "/system 你是测试助手", "保险", "/reset", "/quit",
                  "never read"])
    out = io.StringIO()
    terminal_chat(session, lambda prompt: next(lines), out)
    text = out.getvalue()
    assert text.count("assistant> ") == 3
    assert "(system prompt set; new conversation)" in text and "(new conversation)" in text
    assert session.system == "你是测试助手" and session.turns == []
    assert next(lines) == "never read"  # /quit stopped reading

    session.turns.clear()
    first = "".join(session.reply("你好"))
    assert [t["role"] for t in session.turns] == ["user", "assistant"]
    assert session.turns[1]["content"] == first
    "".join(session.reply("再说一遍"))
    assert len(session.turns) == 4  # the history grows turn by turn


def test_terminal_chat_keeps_to_the_context(model: Transformer, chat) -> None:  # noqa: ANN001
    from lmforge.infer.chat import ChatSession

    session = ChatSession(model, chat, SamplingConfig(max_new_tokens=8, temperature=0.0))
    for _ in range(12):
        "".join(session.reply("请详细解释一下保险合同中的犹豫期条款和退保规则。" * 2))
    assert len(session.turns) < 24  # the oldest exchanges were dropped to fit the context
    assert session.turns[0]["role"] == "user"
