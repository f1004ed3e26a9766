"""The command line: help with examples, a full tiny data run, errors that name the field."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.cli import build_parser, main

COMMANDS = [[], ["data"], ["data", "prepare"], ["data", "tokenize"], ["tokenizer"],
            ["tokenizer", "train"], ["tokenizer", "encode"], ["pretrain"], ["generate"],
            ["export"], ["export", "hf"], ["chat"], ["sft"], ["dpo"], ["rm"], ["kto"], ["ppo"],
            ["grpo"],
            ["serve"], ["agent"]]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lmforge" in out
    assert "example" in out


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("lmforge ")


def test_tiny_run_outputs(tiny_run: Path) -> None:
    data = tiny_run / "data"
    report = json.loads((data / "report.json").read_text(encoding="utf-8"))
    assert report["sources"]["insurance"]["rate"] != report["sources"]["zh"]["rate"]
    assert report["domain_fraction_actual"] == pytest.approx(0.4, abs=0.1)
    assert report["tokens"]["splits"]["train"]["tokens"] > 0
    assert "## Mix" in (data / "report.md").read_text(encoding="utf-8")
    for stage, section in ((data, "data"), (tiny_run / "tokenizer", "tokenizer"),
                           (data / "shards", "shards")):  # the sections each stage was handed
        resolved = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        assert section in resolved and "run" not in resolved
    assert json.loads((data / "config.json").read_text(encoding="utf-8"))["seed"] == 7
    val = [json.loads(line) for line in (data / "corpus" / "val.jsonl").open(encoding="utf-8")]
    train = [json.loads(line) for line in (data / "corpus" / "train.jsonl").open(encoding="utf-8")]
    held_contracts = {r["contract"] for r in val if r["source"] == "insurance"}
    assert not held_contracts & {r.get("contract") for r in train}


def test_prepare_is_deterministic(tiny_recipe: Path, tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["data", "prepare", "--recipe", str(tiny_recipe),
                     "--set", f"run.out_dir={out.as_posix()!r}"]) == 0
        outputs.append((out / "data" / "corpus" / "train.jsonl").read_bytes())
    assert outputs[0] == outputs[1]


def test_bad_override_exits_with_the_field_named(tiny_recipe: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    code = main(["data", "prepare", "--recipe", str(tiny_recipe),
                 "--set", "data.dedup.jaccard_threshold=2"])
    assert code == 2
    assert "data.dedup.jaccard_threshold" in capsys.readouterr().err


def test_tokenize_before_prepare_says_what_to_run(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["tokenizer", "train", "--set", f"run.out_dir={str(tmp_path)!r}"]) == 2
    assert "lmforge data prepare" in capsys.readouterr().err


def test_encode_command(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    folder = str(tiny_run / "tokenizer")
    assert main(["tokenizer", "encode", "--tokenizer", folder, "保险2024"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pieces"][-4:] == ["2", "0", "2", "4"]


def test_generate_command_streams_and_batches(tiny_run: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    model = str(tiny_run / "pretrain" / "model")
    assert main(["generate", "--model", model, "被保险人", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("被保险人")
    assert main(["generate", "--model", model, "保险", "To be", "--max-new-tokens", "4",
                 "--chat", "--quantize", "int8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["保险", "To be"]


def test_export_command_writes_a_hf_folder(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert main(["export", "hf", "--model", str(tiny_run / "pretrain" / "model"),
                 "--out", str(out), "--dtype", "bfloat16"]) == 0
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    generation = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert config["torch_dtype"] == "bfloat16"
    assert len(generation["eos_token_id"]) == 2 == len(config["eos_token_id"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "model.safetensors"):
        assert (out / name).exists(), name
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert "im_start" in tokenizer_config["chat_template"]


def test_generate_with_beams_is_the_best_beam(tiny_run: Path, capsys: pytest.CaptureFixture
                                              ) -> None:
    from lmforge.infer import beam_search, load_for_inference

    folder = tiny_run / "pretrain" / "model"
    assert main(["generate", "--model", str(folder), "被保险人", "保险", "--num-beams", "3",
                 "--max-new-tokens", "6"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model, chat = load_for_inference(folder)
    tok = chat.tokenizer
    for row in rows:
        best = beam_search(model, chat, tok.encode(row["prompt"], add_special_tokens=False).ids,
                           3, 6, 1.0)[0]
        assert row["completion"] == tok.decode(best.tokens, skip_special_tokens=True)


def test_a_flag_is_a_validated_override_of_its_field(tiny_run: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    model = str(tiny_run / "pretrain" / "model")
    assert main(["generate", "--model", model, "保险", "--temperature", "3"]) == 2
    assert "assistant.sampling.temperature" in capsys.readouterr().err


def test_chat_answers_as_the_recipes_assistant(tiny_run: Path, tiny_recipe: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal chat gets the recipe's system prompt and sampling, with flags on top."""
    import lmforge.infer

    seen = {}

    def fake_chat(session, read, out) -> None:  # noqa: ANN001
        seen.update(system=session.system, sampling=session.sampling)

    monkeypatch.setattr(lmforge.infer, "terminal_chat", fake_chat)
    model = str(tiny_run / "pretrain" / "model")
    assert main(["chat", "--recipe", str(tiny_recipe), "--model", model, "--top-k", "5"]) == 0
    assert seen["system"].startswith("你是保小助，由测试公司开发")
    assert seen["sampling"].top_k == 5
    assert main(["chat", "--recipe", str(tiny_recipe), "--model", model, "--system", ""]) == 0
    assert seen["system"] == ""


def test_serve_hands_the_recipes_assistant_and_keys_to_the_server(
        tiny_run: Path, tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lmforge serve`` (and ``run --serve``, through the same function) serves the assistant
    the recipe trained, with the flags' fields and every key source parsed by one parser."""
    import lmforge.serve

    seen = {}

    def fake_server(model, chat, assistant, config, keys, grounding, model_name,  # noqa: ANN001
                    grounding_settings=None, agent=None) -> None:  # noqa: ANN001
        seen.update(assistant=assistant, config=config, keys=keys, name=model_name,
                    agent=agent)

    monkeypatch.setattr(lmforge.serve, "run_server", fake_server)
    monkeypatch.setenv("LMFORGE_API_KEYS", "sk-env sk-alice:alice:claims,staff:acme")
    key_file = tmp_path / "keys"
    key_file.write_text("# ops\nsk-file\n", encoding="utf-8")
    assert main(["serve", "--recipe", str(tiny_recipe), "--model",
                 str(tiny_run / "pretrain" / "model"), "--port", "8123", "--frequency-penalty",
                 "0.4", "--api-key", "sk-flag", "--api-key-file", str(key_file)]) == 0
    assert seen["assistant"].system.startswith("你是保小助")
    assert seen["assistant"].sampling.frequency_penalty == 0.4
    assert seen["config"].port == 8123 and seen["name"] == "model"
    assert seen["agent"] is not None and seen["agent"].max_steps >= 1  # the recipe's [agent]
    assert set(seen["keys"].keys) == {"sk-env", "sk-alice", "sk-flag", "sk-file"}
    alice = seen["keys"].keys["sk-alice"]
    assert (alice.user, set(alice.groups), alice.tenant) == ("alice", {"claims", "staff"}, "acme")
