"""The byte-level tokenizer the eval tests use (tests/tiny_models.py)."""

from __future__ import annotations

from tiny_models import byte_tokenizer


def test_byte_tokenizer_round_trips_text_one_token_per_byte():
    tokenizer = byte_tokenizer()
    text = "Café au lait\n\n= Title ="
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text
    assert max(ids) < len(tokenizer) == 257
