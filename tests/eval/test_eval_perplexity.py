"""Perplexity: the LLM-Pruner/SlimLLM windowing and the exp(mean NLL) it reports."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from slimllm.data.sources import DataSourceError, tokenize_stream
from slimllm.eval import perplexity, perplexity_of_stream, token_windows
from tiny_models import byte_tokenizer
from tiny_models import tiny_byte_llama as tiny_llama


def hand_computed_nlls(model, windows: torch.Tensor) -> list[float]:
    """-log p(token | earlier tokens of its window), one window and one position at a time."""
    nlls = []
    with torch.no_grad():
        for window in windows:
            log_probs = torch.log_softmax(model(window[None]).logits[0].double(), dim=-1)
            for position in range(1, window.numel()):
                nlls.append(-log_probs[position - 1, window[position]].item())
    return nlls


def test_windows_are_consecutive_and_cover_every_token_once():
    stream = torch.arange(1000)
    windows = token_windows(stream, 128)
    assert windows.shape == (7, 128)
    # concatenated, the windows are exactly the stream up to the last full window: nothing
    # skipped, nothing repeated; only the tail shorter than one window is left out
    assert torch.equal(windows.reshape(-1), stream[: 7 * 128])
    assert torch.unique(windows).numel() == windows.numel()
    assert stream.numel() - windows.numel() < 128


def test_limit_keeps_the_first_windows():
    stream = torch.arange(1000)
    assert torch.equal(token_windows(stream, 100, limit=3), stream[:300].view(3, 100))
    assert token_windows(stream, 100, limit=50).shape == (10, 100)


def test_text_shorter_than_one_window_is_an_error():
    with pytest.raises(DataSourceError, match="fewer than one window"):
        token_windows(torch.arange(50), 128)


def test_perplexity_equals_exp_of_mean_hand_computed_nll():
    model = tiny_llama(vocab_size=64)
    stream = torch.randint(0, 64, (7 * 16 + 5,), generator=torch.Generator().manual_seed(1))
    # batch 3 over 7 windows: the last batch is ragged
    result = perplexity_of_stream(model, stream, seqlen=16, batch_size=3)
    nlls = hand_computed_nlls(model, stream[: 7 * 16].view(7, 16))
    assert result["tokens_scored"] == len(nlls) == 7 * 15
    assert result["windows"] == 7 and result["tokens_total"] == 7 * 16 + 5
    assert result["mean_nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-6)


def test_bos_before_every_window_scores_every_text_token_after_it():
    model = tiny_llama(vocab_size=64)
    stream = torch.randint(1, 64, (5 * 16,), generator=torch.Generator().manual_seed(2))
    result = perplexity_of_stream(model, stream, seqlen=16, batch_size=2, bos_token_id=0)
    # by hand: each window after token 0; all 16 text tokens scored, <bos> never
    with_bos = torch.cat([torch.zeros(5, 1, dtype=stream.dtype), stream.view(5, 16)], dim=1)
    nlls = hand_computed_nlls(model, with_bos)
    assert result["bos"] and result["tokens_scored"] == len(nlls) == 5 * 16
    assert result["mean_nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-6)
    assert result["tokens_in_windows"] == 5 * 17 and result["windows"] == 5


def test_bos_without_a_bos_token_is_an_error(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("some text " * 200)
    tokenizer = byte_tokenizer()
    tokenizer.bos_token = None
    with pytest.raises(ValueError, match="no <bos> token"):
        perplexity(tiny_llama(), tokenizer, str(text), seqlen=16, bos=True)


def test_batch_size_and_limit_do_not_change_the_scored_windows():
    model = tiny_llama(vocab_size=64)
    stream = torch.randint(0, 64, (10 * 16,), generator=torch.Generator().manual_seed(2))
    one_by_one = perplexity_of_stream(model, stream, seqlen=16, batch_size=1, limit=4)
    batched = perplexity_of_stream(model, stream, seqlen=16, batch_size=8, limit=4)
    assert one_by_one["windows"] == batched["windows"] == 4
    assert batched["ppl"] == pytest.approx(one_by_one["ppl"], rel=1e-5)
    expected = math.exp(sum(hand_computed_nlls(model, stream[:64].view(4, 16))) / (4 * 15))
    assert batched["ppl"] == pytest.approx(expected, rel=1e-6)


def test_perplexity_of_a_text_file_reports_its_provenance(tmp_path):
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." for i in range(20))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    model, tokenizer = tiny_llama(), byte_tokenizer()
    result = perplexity(model, tokenizer, str(path), seqlen=64, batch_size=4, progress=False)
    assert result["data"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert result["tokens_total"] == len(text.encode())  # byte tokenizer, no special tokens
    direct = perplexity_of_stream(model, tokenize_stream(tokenizer, text), seqlen=64)
    assert result["ppl"] == pytest.approx(direct["ppl"], rel=1e-6)
    assert result["wall_s"] >= 0


@pytest.mark.real_model
@pytest.mark.evaluation_text
@pytest.mark.parametrize("source", ["wikitext2", "ptb"])
def test_smollm2_perplexity_on_the_first_windows_is_that_of_a_trained_model(smollm2, source):
    model, tokenizer = smollm2
    result = perplexity(model, tokenizer, source, seqlen=128, limit=2, progress=False)
    assert result["windows"] == 2 and result["data"]["source"] == source
    # a random 49k-vocabulary model scores ~49152; a trained 135M model tens to low hundreds
    assert 5 < result["ppl"] < 400


@pytest.fixture(scope="module")
def smollm2():
    import slimllm

    return slimllm.load("smollm2-135m")
