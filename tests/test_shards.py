"""Shards: exact round trip, document boundaries, and atomicity under a crash."""

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import ShardError, ShardSet
from lmforge.tokenizer import EOS, load_tokenizer


def test_shards_round_trip_the_corpus(tiny_run: Path) -> None:
    tok = load_tokenizer(tiny_run / "tokenizer")
    shards = ShardSet(tiny_run / "data" / "shards", verify_checksums=True)
    assert shards.dtype == np.uint16
    for split in ("train", "val"):
        records = [json.loads(line) for line in
                   (tiny_run / "data" / "corpus" / f"{split}.jsonl").open(encoding="utf-8")]
        docs = list(shards.documents(split))
        assert len(docs) == len(records) > 0
        for (ids, source), record in zip(docs, records, strict=True):
            assert ids[-1] == tok.token_to_id(EOS)
            assert tok.decode(ids[:-1].tolist()) == record["text"]
            assert source == record["source"]
        info = shards.split_info(split)
        assert info["bytes"] == sum(len(r["text"].encode("utf-8")) for r in records)


def test_small_shard_size_gives_several_shards(tiny_run: Path) -> None:
    shards = ShardSet(tiny_run / "data" / "shards")
    train = shards.shards("train")
    assert len(train) > 1
    assert sum(len(s.tokens) for s in train) == shards.split_info("train")["tokens"]


def test_truncated_shard_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(tiny_run / "data" / "shards", copy)
    victim = copy / "train-00000.bin"
    victim.write_bytes(victim.read_bytes()[:-2])
    with pytest.raises(ShardError, match="incomplete"):
        ShardSet(copy).shards("train")


def test_corrupt_shard_fails_checksum(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(tiny_run / "data" / "shards", copy)
    victim = copy / "val-00000.bin"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum"):
        ShardSet(copy, verify_checksums=True).shards("val")


def test_crash_midway_leaves_previous_shards_intact(tiny_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from lmforge.config import ShardConfig
    from lmforge.data import shards as shards_module
    from lmforge.data import tokenize_corpus

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_run / "data", data_dir)
    before = (data_dir / "shards" / "index.json").read_bytes()
    calls = {"n": 0}
    real_flush = shards_module.ShardWriter._flush

    def dying_flush(self: shards_module.ShardWriter) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a kill in the middle of writing
        real_flush(self)

    monkeypatch.setattr(shards_module.ShardWriter, "_flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(data_dir, tiny_run / "tokenizer", data_dir / "shards",
                        ShardConfig(shard_tokens=2048))
    assert (data_dir / "shards" / "index.json").read_bytes() == before
    ShardSet(data_dir / "shards", verify_checksums=True).shards("train")
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".shards")]


def test_missing_index_has_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no shard index"):
        ShardSet(tmp_path)
