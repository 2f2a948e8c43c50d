"""A GGUF converted tensor by tensor (slimllm.gguf_folder) equals transformers' whole-model load
followed by save_pretrained: same tensors bit for bit, same config, same tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from slimllm import io
from slimllm.gguf_folder import gguf_to_folder
from slimllm.offload import TensorFiles

pytestmark = pytest.mark.real_model


def test_streamed_conversion_equals_transformers_whole_model_load(tmp_path):
    gguf = io._builtin_gguf("smollm2-135m")
    (tmp_path / "streamed").mkdir()
    gguf_to_folder(gguf, tmp_path / "streamed")
    model, tokenizer = io._load_gguf(gguf, torch.float32)
    model.save_pretrained(tmp_path / "whole")
    tokenizer.save_pretrained(tmp_path / "whole")
    whole, streamed = TensorFiles.of_folder(tmp_path / "whole"), TensorFiles.of_folder(tmp_path / "streamed")
    assert sorted(streamed.names) == sorted(whole.names)
    for name in whole.names:
        assert torch.equal(streamed.read([name])[name], whole.read([name])[name]), name
    streamed_folder, whole_folder = tmp_path / "streamed", tmp_path / "whole"
    for file in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert json.loads((streamed_folder / file).read_text()) == json.loads((whole_folder / file).read_text())
    assert (streamed_folder / "tokenizer.json").read_bytes() == (whole_folder / "tokenizer.json").read_bytes()
    reloaded, _ = io.load(tmp_path / "streamed")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_convert_command_writes_a_folder_that_prunes_out_of_core_and_refuses_bad_input(tmp_path, capsys):
    from slimllm.cli import main

    assert main(["convert", str(tmp_path / "missing.gguf"), "--output", str(tmp_path / "out")]) == 2
    assert "missing.gguf is not a .gguf file" in capsys.readouterr().err
    gguf = io._builtin_gguf("smollm2-135m")
    (tmp_path / "taken").mkdir()
    assert main(["convert", str(gguf), "--output", str(tmp_path / "taken")]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(gguf), "--output", str(tmp_path / "smollm2"), "--dtype", "bfloat16"]) == 0
    stored = TensorFiles.of_folder(tmp_path / "smollm2")
    assert {stored.read([name])[name].dtype for name in stored.names[:3]} == {torch.bfloat16}
    model, _ = io.load(tmp_path / "smollm2", on_disk=True)  # weights left on disk: it prunes out of core
    assert {p.device.type for p in model.model.layers.parameters()} == {"meta"}
    assert not list(tmp_path.glob(".smollm2.tmp-*"))  # written through a temporary folder, renamed when complete
