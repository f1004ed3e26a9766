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


def greedy_reference(model: Transformer, prompt: list[int], new: int) -> list[int]:
    """Greedy tokens from whole forward passes, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def engine_tokens(engine: Engine, prompts: list[list[int]], new: int
                  ) -> list[list[tuple[int, float]]]:
    """Each prompt's greedy (token, log-probability) pairs; the log-probabilities move with
    any change to the keys/values, where an untrained model's argmax seldom does."""
    config = SamplingConfig(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    names = [engine.submit(prompt, config) for prompt in prompts]
    out: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    for event in engine.run():
        if event.token is not None and event.logprob is not None:
            out[event.request].append((event.token, event.logprob))
    return [out[name] for name in names]


def assert_same(got: list[list[tuple[int, float]]], expected: list[list[tuple[int, float]]]
                ) -> None:
    assert [[t for t, _ in row] for row in got] == [[t for t, _ in row] for row in expected]
    assert [lp for row in got for _, lp in row] == pytest.approx(
        [lp for row in expected for _, lp in row], abs=1e-5)


def test_fused_engine_decodes_like_the_unfused_model(tok) -> None:  # noqa: ANN001
    import copy

    from conftest import tiny_model

    plain = tiny_model(tok, max_seq_len=128, seed=5)
    served = copy.deepcopy(plain)
    prompts = [tok.encode(p).ids for p in PROMPTS]
    expected = [greedy_reference(plain, p, 10) for p in prompts]
    engine = Engine(served, tok, max_batch=4)  # rows at different positions: the masked path
    assert served.layers[0].self_attn.qkv_proj is not None
    for rows in (engine_tokens(engine, prompts, 10),
                 engine_tokens(Engine(served, tok, max_batch=1), prompts[:1], 10)):
        assert [[t for t, _ in row] for row in rows] == expected[: len(rows)]


def shared_prefix_prompts(tok) -> list[list[int]]:  # noqa: ANN001
    prefix = tok.encode("你是保险助手。请根据以下条款回答问题：被保险人在保险期间内身故的，"
                        "保险人按照约定给付身故保险金。").ids
    assert len(prefix) > 32
    return [prefix + tok.encode(q).ids for q in ("犹豫期多久？", "What is covered?", "保")]


def test_prefix_cache_reuses_blocks_and_changes_no_output(model: Transformer, tok) -> None:  # noqa: ANN001
    from lmforge.infer.prefix import BLOCK

    prompts = shared_prefix_prompts(tok)
    shared = len(prompts[0]) - len(tok.encode("犹豫期多久？").ids)
    cold = Engine(model, tok, max_batch=3, prefix_cache_tokens=0)
    expected = [engine_tokens(cold, [p], 8)[0] for p in prompts]
    assert cold.prefilled == sum(len(p) for p in prompts)
    warm = Engine(model, tok, max_batch=3)
    first = engine_tokens(warm, prompts[:1], 8)  # fills the cache
    assert warm.prefilled == len(prompts[0])
    rest = engine_tokens(warm, prompts[1:], 8)  # both reuse the prefix's full blocks, batched
    assert_same(first + rest, expected)
    reused = shared // BLOCK * BLOCK
    assert reused >= 32
    assert warm.prefilled == len(prompts[0]) + sum(len(p) - reused for p in prompts[1:])
    again = warm.prefilled
    assert_same(engine_tokens(warm, prompts[:1], 8), expected[:1])  # its blocks but the last
    assert warm.prefilled - again == len(prompts[0]) - (len(prompts[0]) - 1) // BLOCK * BLOCK


def test_prefix_cache_is_bounded_and_dropped_when_weights_change(tok) -> None:  # noqa: ANN001
    from conftest import tiny_model

    from lmforge.infer.prefix import BLOCK

    model = tiny_model(tok, max_seq_len=128, seed=7)
    prompts = shared_prefix_prompts(tok)
    engine = Engine(model, tok, max_batch=1, prefix_cache_tokens=2 * BLOCK)
    engine_tokens(engine, [list(range(200, 264))], 2)  # 4 blocks of another prompt
    assert engine.prefixes.tokens == 2 * BLOCK
    engine_tokens(engine, prompts[:1], 2)
    assert engine.prefixes.tokens == 2 * BLOCK  # the older prompt's blocks were evicted
    assert len(engine.prefixes.lookup(prompts[1])) == 2
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(2.0)  # new weights: the cached keys are stale
    before = engine.prefilled
    assert_same(engine_tokens(engine, prompts[1:2], 6),
                engine_tokens(Engine(model, tok, max_batch=1, prefix_cache_tokens=0),
                              prompts[1:2], 6))
    assert engine.prefilled - before == len(prompts[1])  # nothing reused
