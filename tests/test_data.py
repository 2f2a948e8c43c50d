"""Text sources: offline detection, fallbacks, local files, seeded windows."""

import json

import pytest
import torch

from slimllm import hub
from slimllm.data import sources
from slimllm.data.sources import DataSourceError, calibration_windows, load_text


class WordTokenizer:
    """Whitespace tokenizer: one id per word, enough to test windowing."""

    def __call__(self, text, **_):
        return {"input_ids": [hash(word) % 1000 for word in text.split()]}


@pytest.fixture(autouse=True)
def fresh_hub_cache():
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_hf_hub_offline_is_honoured_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_args, **_kwargs):
        raise AssertionError("must not touch the network when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    assert hub.hub_reachable() is False


def test_bookcorpus_falls_back_to_lambada_with_a_notice(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text, info = load_text("bookcorpus")
    assert "LAMBADA" in capsys.readouterr().err
    assert info.origin.startswith("offline:") and len(text) > 1_000_000
    passages = sources.lambada_passages()
    assert len(passages) == 5153  # one per doc_id (LAMBADA itself repeats two passages)
    assert text.split("\n\n")[0] == passages[0]


def test_hub_source_uses_datasets_when_reachable(monkeypatch):
    calls = {}

    class FakeStream:
        def shuffle(self, seed, buffer_size):
            calls["seed"] = seed
            return self

        def __iter__(self):
            return iter({"text": f"row {i}"} for i in range(100))

    def fake_load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return FakeStream()

    import datasets

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    text, info = load_text("hf:some/corpus:cfg", hub_rows=5, seed=3)
    assert text == "\n\n".join(f"row {i}" for i in range(5))
    assert calls == {"name": "some/corpus", "config": "cfg", "split": "train", "streaming": True, "seed": 3}
    assert info.origin == "hub:some/corpus:cfg:train"


def test_unreachable_hub_source_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match="unreachable"):
        load_text("hf:some/corpus")


def test_local_jsonl_and_txt(tmp_path):
    good = tmp_path / "calib.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(3)) + "\n")
    assert load_text(str(good))[0] == "doc 0\n\ndoc 1\n\ndoc 2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataSourceError, match=r"bad\.jsonl:1"):
        load_text(str(bad))
    with pytest.raises(DataSourceError, match="not found"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(DataSourceError, match="unknown text source"):
        load_text("no-such-source")


def test_windows_are_seeded_distinct_and_cut_from_the_stream(tmp_path):
    path = tmp_path / "words.txt"
    words = [f"w{i}" for i in range(5000)]
    path.write_text(" ".join(words))
    tokenizer = WordTokenizer()
    first, info = calibration_windows(tokenizer, str(path), nsamples=8, seqlen=64, seed=42)
    again, _ = calibration_windows(tokenizer, str(path), nsamples=8, seqlen=64, seed=42)
    other, _ = calibration_windows(tokenizer, str(path), nsamples=8, seqlen=64, seed=43)
    assert torch.equal(first, again) and not torch.equal(first, other)
    stream = torch.tensor(tokenizer(path.read_text())["input_ids"])
    for row, window in zip(first, info["windows"], strict=True):
        assert torch.equal(row, stream[window * 64 : (window + 1) * 64])
    assert len(set(info["windows"])) == 8


@pytest.mark.evaluation_text
def test_wikitext2_and_ptb_follow_the_shared_normalisation():
    wiki, info = load_text("wikitext2")
    assert "\r" not in wiki and "\n\n\n" not in wiki and wiki.count("\n\n") == 2891 - 1
    assert info.sha256 and info.origin.endswith("wiki.test.raw")
    ptb, _ = load_text("ptb")
    lines = (sources.shared_data_dir() / "ptb/ptb.valid.txt").read_text().splitlines()
    assert ptb.count("\n\n") + 1 == sum(1 for line in lines if line.strip())
