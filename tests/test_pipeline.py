"""``lmforge run`` end to end on the tiny recipe: every stage in order, the report card, the
assistant answering from the index, and re-runs that skip, re-run or resume exactly the stages
they should."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
from conftest import TINY, pipeline_recipe

STAGES = ["data", "tokenizer", "shards", "pretrain", "sft", "dpo", "rag", "decoding", "eval",
          "export"]


def statuses(output: str) -> dict[str, str]:
    found = dict(re.findall(r"^(\w+): (running|resuming|unchanged)", output, re.MULTILINE))
    return {stage: found.get(stage, "-") for stage in STAGES}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    from lmforge.cli import main

    base = tmp_path_factory.mktemp("pipeline")
    recipe = base / "tiny.toml"
    recipe.write_text(pipeline_recipe(base / "run"), encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(recipe)]) == 0
    return recipe, base / "run", out.getvalue()


def test_every_stage_runs_in_order_and_says_where_outputs_are(pipeline_run) -> None:
    recipe, run, output = pipeline_run
    assert statuses(output) == dict.fromkeys(STAGES, "running")
    order = [output.index(f"{stage}: running") for stage in STAGES]
    assert order == sorted(order)
    for stage, folder in zip(STAGES, ["data", "tokenizer", "data/shards", "pretrain", "sft",
                                      "dpo", "rag", "decoding", "eval", "export"], strict=True):
        marker = json.loads((run / folder / "stage.json").read_text(encoding="utf-8"))
        assert marker["stage"] == stage and len(marker["fingerprint"]) == 64
        assert not (run / folder / "stage.started.json").exists()
    assert f"lmforge serve --recipe {recipe} --model {run / 'decoding' / 'model'}" in output
    assert str(run / "export" / "hf") in output
    assert (run / "export" / "hf" / "config.json").exists()


def test_report_card_holds_every_section_and_real_figures(pipeline_run) -> None:
    _, run, _ = pipeline_run
    card = (run / "report.md").read_text(encoding="utf-8")
    for heading in ("## Evaluation", "### Domain QA", "### Held-out bits per byte",
                    "### Multiple choice", "## Stages", "## Data", "## Tokenizer", "## Model",
                    "## Training", "## Sample answers", "## Talk to it"):
        assert heading in card, heading
    for image in ("training.png", "eval.png"):
        assert (run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
    qa = evaluation["qa"]
    held = [json.loads(line) for line in
            (run / "eval" / "heldout_queries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert qa["questions"] == len(held) > 0
    for system in ("rag", "no_rag", "baseline"):
        assert 0.0 <= qa[system]["char_f1"] <= 1.0
        assert f"{qa[system]['char_f1']:.3f}" in card
    assert qa["baseline"]["char_f1"] > 0  # the best sentence shares characters with answers
    pretrain = json.loads((run / "pretrain" / "report.json").read_text(encoding="utf-8"))
    assert f"{pretrain['parameters']:,}" in card
    assert evaluation["mcq"]["assistant"]["questions"] == 20
    hardware = json.loads((run / "report.json").read_text(encoding="utf-8"))["hardware"]
    assert hardware["cores"] >= 1 and hardware["torch"]


def test_heldout_contracts_are_never_trained_on(pipeline_run) -> None:
    _, run, _ = pipeline_run
    held = {json.loads(line)["contract"] for line in
            (run / "eval" / "heldout_queries.jsonl").read_text(encoding="utf-8").splitlines()}
    train_contracts = {json.loads(line).get("contract") for line in
                       (run / "data" / "corpus" / "train.jsonl").read_text(
                           encoding="utf-8").splitlines()}
    assert held and not held & train_contracts
    sft = json.loads((run / "sft" / "report.json").read_text(encoding="utf-8"))
    assert sft["heldout_contracts"] == len(held)
    # the decoding stage chose on questions of contracts neither held out nor trained on
    decoding = json.loads((run / "decoding" / "report.json").read_text(encoding="utf-8"))
    assert sft["validation_contracts"] > 0 and decoding["questions"] > 0
    assert set(decoding["contracts"]) and not set(decoding["contracts"]) & held
    assert len(decoding["contracts"]) == sft["validation_contracts"]


def test_rerun_skips_unchanged_stages_and_reruns_what_a_change_touches(pipeline_run, capsys
                                                                        ) -> None:
    from lmforge.cli import main

    recipe, run, _ = pipeline_run
    assert main(["run", str(recipe)]) == 0
    assert statuses(capsys.readouterr().out) == dict.fromkeys(STAGES, "unchanged")
    assert main(["run", str(recipe), "--set", "sft.train.lr=0.002"]) == 0
    after = statuses(capsys.readouterr().out)
    assert after == {**dict.fromkeys(STAGES[:4], "unchanged"), "sft": "running",
                     "dpo": "running", "rag": "unchanged", "decoding": "running",
                     "eval": "running", "export": "running"}


def test_retrieval_trains_inside_the_run_on_training_contracts_only(pipeline_run, capsys
                                                                    ) -> None:
    from lmforge.cli import main

    recipe, run, _ = pipeline_run
    tiny = [f"rag.train_queries={str(TINY / 'rag_queries.jsonl')!r}",
            "rag.reranker.feature_train.steps=6", "rag.reranker.feature_train.warmup_steps=1",
            "rag.reranker.train.steps=4", "rag.reranker.train.warmup_steps=1",
            "rag.reranker.dim=32", "rag.reranker.n_layers=1", "rag.reranker.vocab_size=600",
            "rag.reranker.val_fraction=0.5", "rag.reranker.train.seq_len=96",
            "rag.validation_fraction=0.4", "rag.synthetic_per_chunk=1",
            "rag.embedder.train.steps=4",
            "rag.embedder.train.warmup_steps=1", "rag.embedder.train.batch_size=4",
            "rag.encoders_from='pretrain'"]
    sets = [item for pair in (("--set", t) for t in tiny) for item in pair]
    assert main(["run", str(recipe), *sets]) == 0
    assert statuses(capsys.readouterr().out)["rag"] == "running"
    marker = json.loads((run / "rag" / "stage.json").read_text(encoding="utf-8"))
    trained = marker["summary"]["retrieval"]
    assert set(trained["reranker"]["held_out"]) == {"reranker", "fusion", "keyword"}
    assert set(trained) == {"questions", "embedder", "fusion", "reranker"}
    pretrain = json.loads((run / "pretrain" / "model" / "lmforge_config.json").read_text(
        encoding="utf-8"))  # both encoders started from the run's pretrained LM
    for part in ("embedder", "reranker"):
        section = json.loads((run / "rag" / part / "config.json").read_text(encoding="utf-8"))
        assert Path(section["init_from"]) == run / "pretrain" / "model"
    embedder = run / "rag" / "embedder" / "model" / "lmforge_config.json"
    assert json.loads(embedder.read_text(encoding="utf-8")) == pretrain
    assert marker["summary"]["embedded"] == 0  # the documents were embedded by the first run
    held = {json.loads(line)["contract"] for line in
            (run / "eval" / "heldout_queries.jsonl").read_text(encoding="utf-8").splitlines()}
    trained_on = [json.loads(line)["contract"] for line in
                  (run / "rag" / "train_queries.jsonl").read_text(
                      encoding="utf-8").splitlines()]
    assert trained_on and not held & set(trained_on)
    decoding = json.loads((run / "decoding" / "report.json").read_text(encoding="utf-8"))
    assert not set(decoding["contracts"]) & set(trained_on)  # nor the decoding's validation
    assert len(trained_on) + len(held) + decoding["questions"] == 20  # one question each


def test_an_interrupted_stage_resumes_from_its_checkpoint(pipeline_run, capsys) -> None:
    from lmforge.cli import main

    recipe, run, _ = pipeline_run
    marker = run / "pretrain" / "stage.json"
    fingerprint = json.loads(marker.read_text(encoding="utf-8"))["fingerprint"]
    marker.unlink()  # what a kill during pretraining leaves: started, never finished
    (run / "pretrain" / "stage.started.json").write_text(json.dumps({"fingerprint": fingerprint}))
    assert main(["run", str(recipe), "--until", "pretrain"]) == 0
    output = capsys.readouterr().out
    assert "pretrain: resuming" in output
    assert json.loads(marker.read_text(encoding="utf-8"))["fingerprint"] == fingerprint
    rows = [json.loads(line) for line in
            (run / "pretrain" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps))  # the resumed run did not repeat or restart steps


def test_unknown_stage_is_named(pipeline_run, capsys) -> None:
    from lmforge.cli import main

    recipe, _, _ = pipeline_run
    assert main(["run", str(recipe), "--until", "deploy"]) == 2
    assert "unknown stage 'deploy'" in capsys.readouterr().err


def test_a_fingerprint_covers_exactly_what_the_stage_is_handed(tmp_path: Path) -> None:
    """Settings, the content of files named by input fields, and the fingerprints of the stages
    whose folders a path lies in; the stage's own output folder does not count."""
    from lmforge.config import SFTConfig
    from lmforge.pipeline import RunLayout
    from lmforge.pipeline.fingerprint import fingerprint

    layout = RunLayout(tmp_path / "run")
    chats = tmp_path / "chat.jsonl"
    chats.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    upstream = {"pretrain": "p1", "data": "d1"}

    def fp(config: SFTConfig, base: Path, ups: dict[str, str] = upstream) -> str:
        return fingerprint("sft", {"sft": config, "base": base, "out": layout.stage("sft")},
                           layout, ups)

    config = SFTConfig(chat_files=[str(chats)])
    first = fp(config, layout.model("pretrain"))
    assert fp(config, layout.model("pretrain")) == first
    assert fp(SFTConfig(chat_files=[str(chats)], rag_distractors=3),
              layout.model("pretrain")) != first  # a setting
    assert fp(config, layout.model("pretrain"), {**upstream, "pretrain": "p2"}) != first
    assert fp(config, layout.model("pretrain"), {**upstream, "data": "d2"}) == first  # unread
    chats.write_text('{"instruction": "a", "output": "c"}\n', encoding="utf-8")
    assert fp(config, layout.model("pretrain")) != first  # an input file's content
    with pytest.raises(ValueError, match="stage dpo, which has not run"):
        fp(config, layout.model("dpo"))


def test_how_many_workers_prepare_the_data_is_not_part_of_its_fingerprint(tmp_path: Path
                                                                          ) -> None:
    """The corpus is the same bytes for any workers or executor (tests/test_data_engine.py), so
    changing them re-runs nothing; a setting that changes the output still does."""
    from lmforge.config.data import DataConfig, SlurmConfig
    from lmforge.pipeline import RunLayout
    from lmforge.pipeline.fingerprint import fingerprint

    layout = RunLayout(tmp_path / "run")

    def fp(config: DataConfig) -> str:
        return fingerprint("data", {"data": config, "out": layout.stage("data"), "seed": 0},
                           layout, {})

    first = fp(DataConfig())
    assert fp(DataConfig(workers=7, executor="slurm",
                         slurm=SlurmConfig(partition="cpu"))) == first
    assert fp(DataConfig(workers=7, mix=dataclasses.replace(DataConfig().mix,
                                                            domain_fraction=0.9))) != first


def test_large_inputs_are_identified_without_reading_them_whole(tmp_path: Path,
                                                                monkeypatch) -> None:  # noqa: ANN001
    import os

    from lmforge.pipeline import fingerprint

    monkeypatch.setattr(fingerprint, "WHOLE_HASH_LIMIT", 2 << 20)
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    weights.write_bytes(bytes(3 << 20))
    config.write_text('{"hidden_size": 64}', encoding="utf-8")
    first = fingerprint.content_hash([tmp_path])

    def rewrite(path: Path, data: bytes) -> None:  # new bytes, the old modification time
        stat = path.stat()
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    middle = bytearray(3 << 20)
    middle[len(middle) // 2] = 1
    rewrite(weights, bytes(middle))
    assert fingerprint.content_hash([tmp_path]) == first  # the trade-off, stated in the module
    ends = bytearray(3 << 20)
    ends[-1] = 1
    rewrite(weights, bytes(ends))
    assert fingerprint.content_hash([tmp_path]) != first
    rewrite(weights, bytes(3 << 20))
    assert fingerprint.content_hash([tmp_path]) == first
    original = weights.stat().st_mtime_ns
    os.utime(weights, ns=(0, original + 10**9))
    assert fingerprint.content_hash([tmp_path]) != first
    os.utime(weights, ns=(0, original))
    assert fingerprint.content_hash([tmp_path]) == first
    rewrite(config, b'{"hidden_size": 65}')  # small files: every byte counts
    assert fingerprint.content_hash([tmp_path]) != first


def test_report_samples_say_where_in_the_document_each_source_is() -> None:
    from lmforge.pipeline.report import samples_section

    sample = {"question": "q", "rag": "a [1]", "no_rag": "b", "reference": "c", "sources": [
        {"n": 1, "document": "rates.xlsx", "location": "sheet 2 (费率表)", "text": "| 40 |"},
        {"n": 2, "document": "old.txt", "text": "written before locations"}]}
    md = samples_section({"qa": {"samples": [sample]}})
    assert "  - [1] rates.xlsx · sheet 2 (费率表): \\| 40 \\|" in md
    assert "  - [2] old.txt: written before locations" in md


def test_every_single_stage_command_finds_its_arguments_and_folder(tmp_path: Path) -> None:
    """``lmforge ppo`` once failed before starting: its folder was missing from the layout."""
    from lmforge.config import RecipeConfig
    from lmforge.pipeline import BY_NAME, RunLayout

    recipe = RecipeConfig()
    layout = RunLayout(tmp_path / "run")
    for name, stage in BY_NAME.items():
        stage.args(recipe, layout)
        assert layout.stage(name).parent == layout.root or name == "shards", name
