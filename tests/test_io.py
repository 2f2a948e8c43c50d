"""Loading and saving: sources named clearly, outputs appear whole or not at all, reloads are exact."""

from __future__ import annotations

import json

import pytest
import torch

import slimllm
from slimllm.io import (
    ModelSourceError,
    OutputExistsError,
    atomic_output_dir,
    check_model_source,
    resolve_dtype,
)
from tiny_models import VOCAB, byte_tokenizer, logits, tiny_gemma3


def test_dtype_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("Float16") is torch.float16
    assert resolve_dtype(None) is None and resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


def test_model_sources_are_checked_without_loading(tmp_path):
    check_model_source("smollm2-135m")  # a built-in
    check_model_source("org/name")  # a hub id: transformers decides
    with pytest.raises(ModelSourceError, match="model path not found"):
        check_model_source(str(tmp_path / "missing"))
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        check_model_source(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelSourceError, match=r"not a model folder: no config\.json"):
        check_model_source(str(tmp_path))


def test_an_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written is left
    with atomic_output_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(OutputExistsError, match="already exists"), atomic_output_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True) as tmp:
        raise RuntimeError("interrupted")
    assert (out / "a").read_text() == "1"  # a failed overwrite keeps the old output
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_then_load_gives_the_same_logits_in_memory_and_on_disk(tmp_path):
    dense = tiny_gemma3()  # tied embeddings, post-norms, q/k norms: the most parts to get right
    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6)
    pruned, plan = slimllm.prune(dense, None, config, data=data, progress=False)
    slimllm.save(pruned, byte_tokenizer(), plan, tmp_path / "p")
    reloaded, tokenizer = slimllm.load(tmp_path / "p")
    ids = data[:2]
    torch.testing.assert_close(logits(reloaded, ids), logits(pruned, ids), rtol=0, atol=0)
    assert tokenizer.eos_token == byte_tokenizer().eos_token
    # saved again from the on-disk copy (streamed piece by piece): the same tensors
    on_disk, _ = slimllm.load(tmp_path / "p", on_disk=True)
    slimllm.save(on_disk, tokenizer, None, tmp_path / "q")
    again, _ = slimllm.load(tmp_path / "q")
    torch.testing.assert_close(logits(again, ids), logits(pruned, ids), rtol=0, atol=0)


def test_a_one_file_folder_has_an_index_of_exactly_its_model_weights(tmp_path):
    """Engines that read every *.safetensors of an unindexed folder (vLLM) must not take the plan's
    recovery tensors for model weights: the index names model.safetensors' tensors and nothing else."""
    from safetensors import safe_open

    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6)
    pruned, plan = slimllm.prune(tiny_gemma3(), None, config, data=data, progress=False)
    slimllm.save(pruned, None, plan, tmp_path / "p")
    assert (tmp_path / "p" / "slimllm_recovery.safetensors").exists()
    index = json.loads((tmp_path / "p" / "model.safetensors.index.json").read_text())
    with safe_open(str(tmp_path / "p" / "model.safetensors"), "pt") as file:
        names = set(file.keys())
        size = sum(file.get_tensor(name).numel() * file.get_tensor(name).element_size() for name in names)
    assert index["weight_map"] == dict.fromkeys(sorted(names), "model.safetensors")
    assert index["metadata"]["total_size"] == size


def test_the_saved_base_model_is_the_causal_lms_decoder(tmp_path):
    """``AutoModel`` (what vLLM's Transformers backend builds) loads the pruned decoder itself."""
    from transformers import AutoModel

    data = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6)
    pruned, _ = slimllm.prune(tiny_gemma3(), None, config, data=data, progress=False)
    slimllm.save(pruned, None, None, tmp_path / "p")
    base = AutoModel.from_pretrained(tmp_path / "p").eval()
    assert type(base).__name__ == "SlimGemma3TextModel"
    with torch.no_grad():
        expected = pruned.model(data[:2]).last_hidden_state
        torch.testing.assert_close(base(data[:2]).last_hidden_state, expected, rtol=0, atol=0)


def test_save_refuses_a_model_that_is_not_pruned(tmp_path):
    with pytest.raises(TypeError, match=r"expects a model returned by slimllm\.prune"):
        slimllm.save(tiny_gemma3(), None, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()
