"""Tiny models and a byte-level tokenizer for the eval tests (imported by the other test_eval_* files)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<eos>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte plus EOS: a real fast tokenizer with a 257-token vocabulary, no files."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab[EOS] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS)


def tiny_llama(vocab_size: int = 257, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised 2-layer LLaMA with GQA, small enough for many forwards per test."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(config).eval()


def test_byte_tokenizer_round_trips_text_one_token_per_byte():
    tokenizer = byte_tokenizer()
    text = "Café au lait\n\n= Title ="
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text
    assert max(ids) < len(tokenizer) == 257
