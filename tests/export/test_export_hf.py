"""``slimllm export --to hf``: stock transformers folders that load without slimllm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from export_helpers import layer_shapes, pruned_folder, reference_logits, remap_heads
from slimllm.cli import main
from slimllm.export import ExportError, export_hf
from tiny_models import VOCAB, tiny_llama

IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))


def _stock_logits(folders: list) -> list[torch.Tensor]:
    """Logits of each folder from a Python that cannot import slimllm, without remote code."""
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["slimllm"] = None  # any import of slimllm now fails
        import torch
        from transformers import AutoModelForCausalLM
        ids = torch.tensor(json.loads(sys.argv[1]))
        out = []
        for folder in sys.argv[2:]:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
                out.append({"class": type(model).__name__, "logits": logits.tolist()})
        print(json.dumps(out))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(IDS.tolist()), *map(str, folders)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_padded_and_biased_exports_load_in_stock_transformers(tmp_path):
    llama = pruned_folder(tmp_path / "llama", "llama", gqa="query", ratio=0.4)
    shapes = layer_shapes(llama)
    # an uneven map, as --gqa query leaves: make one layer [0, 0, 1, 1, 1]-like if it has 2 kv heads
    qwen = pruned_folder(tmp_path / "qwen2", "qwen2", gqa="query", ratio=0.3)
    qwen_plain = pruned_folder(tmp_path / "qwen2-noreg", "qwen2", gqa="group", ratio=0.3, regression=False)
    mistral = pruned_folder(tmp_path / "mistral", "mistral", gqa="group", ratio=0.3)
    assert any(s and len(set(s["query_to_kv"])) < len(s["query_to_kv"]) for s in shapes)

    reports = {}
    for folder in (llama, qwen, qwen_plain):
        reports[folder.name] = export_hf(folder, tmp_path / f"{folder.name}-hf")
    with pytest.raises(ExportError, match="sliding-window"):
        export_hf(mistral, tmp_path / "mistral-hf")  # biases need LLaMA, which has no sliding window
    reports["mistral"] = export_hf(mistral, tmp_path / "mistral-hf", ignore_sliding_window=True)

    names = ["llama", "qwen2", "qwen2-noreg", "mistral"]
    stock = _stock_logits([tmp_path / f"{name}-hf" for name in names])
    for name, row in zip(names, stock, strict=True):
        config = json.loads((tmp_path / f"{name}-hf" / "config.json").read_text())
        assert "auto_map" not in config and not (tmp_path / f"{name}-hf" / "modeling_slimllm.py").exists()
        assert row["class"] == reports[name].architecture
        expected = reference_logits(tmp_path / name, IDS)
        torch.testing.assert_close(torch.tensor(row["logits"]), expected, rtol=0, atol=1e-5)
    assert stock[2]["class"] == "Qwen2ForCausalLM"  # no regression biases: Qwen2's own class
    assert stock[0]["class"] == stock[1]["class"] == stock[3]["class"] == "LlamaForCausalLM"
    assert not reports["llama"].exact_shape and "no smaller or faster" in reports["llama"].notes[-1]
    assert reports["llama"].written_decoder_params > reports["llama"].source_decoder_params


def test_uniform_group_plan_exports_exact_and_compact(tmp_path):
    folder = pruned_folder(tmp_path / "u", "llama", gqa="group", ratio=0.3, uniform=True, round_to=8)
    shapes = layer_shapes(folder)
    assert all(s is not None for s in shapes) and len({json.dumps(s) for s in shapes}) == 1, shapes
    report = export_hf(folder, tmp_path / "u-hf")
    zero_biases = 4 * (3 * 8 + 8 + 8 + 64 + 64)  # q, k, v, gate, up biases of 4 layers (3 heads, width 64)
    assert report.exact_shape and report.written_decoder_params == report.source_decoder_params + zero_biases
    assert not any("padded" in note for note in report.notes) and "zero bias" in report.notes[0]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "u-hf").eval()
    with torch.no_grad():
        got = model(input_ids=IDS, use_cache=False).logits
    torch.testing.assert_close(got, reference_logits(folder, IDS), rtol=0, atol=1e-5)


def test_uneven_map_and_dense_folder(tmp_path):
    # a 6-head / 3-kv dense model whose first layer gets the uneven map [0, 0, 1, 2, 2, 2]
    dense = tiny_llama(num_key_value_heads=3)
    dense.save_pretrained(tmp_path / "dense")
    report = export_hf(tmp_path / "dense", tmp_path / "dense-hf")
    assert report.exact_shape and report.architecture == "LlamaForCausalLM"
    folder = pruned_folder(tmp_path / "p", "llama", gqa="query", ratio=0.2)
    for index, shape in enumerate(layer_shapes(folder)):
        if shape and len(shape["query_to_kv"]) == 6 and max(shape["query_to_kv"]) == 2:
            remap_heads(folder, {index: [0, 0, 1, 2, 2, 2]})
    export_hf(folder, tmp_path / "p-hf")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p-hf").eval()
    with torch.no_grad():
        got = model(input_ids=IDS, use_cache=False).logits
    torch.testing.assert_close(got, reference_logits(folder, IDS), rtol=0, atol=1e-5)


def test_cli_and_clear_errors(tmp_path, capsys):
    folder = pruned_folder(tmp_path / "p", "llama", ratio=0.3)
    assert main(["export", str(folder), "--to", "hf", "--output", str(tmp_path / "out")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert main(["export", str(folder), "--to", "hf", "--output", str(tmp_path / "out")]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    assert main(["export", str(folder), "--to", "hf", "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err
    with pytest.raises(ExportError, match=r"no config\.json"):
        export_hf(tmp_path, tmp_path / "o3")


def test_each_target_reads_its_own_options_and_refuses_another_targets(tmp_path, capsys):
    from dataclasses import fields

    from slimllm.export import TARGETS, export_to

    assert {"gguf", "hf"} <= set(TARGETS)
    folder = pruned_folder(tmp_path / "p", "llama", ratio=0.3)
    out = tmp_path / "out"
    # a gguf option with --to hf is refused before anything is written; the folder is checked first
    assert main(["export", str(folder), "--to", "hf", "--quant", "q8_0", "--output", str(out)]) == 2
    assert "--to hf does not read --quant (an option of --to gguf)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--to", "hf", "--quant", "q8_0", "--output", str(out)]) == 2
    assert "model folder not found" in capsys.readouterr().err and not out.exists()
    # an option both targets read, and the hf target's own, reach the exporter
    options = TARGETS["hf"].options(dtype="bfloat16")
    report = export_to("hf", folder, out, options)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16" and report.written_params > 0
    assert {item.name for item in fields(TARGETS["hf"].options)} == {"dtype", "ignore_sliding_window"}
    with pytest.raises(ValueError, match="unknown export target 'onnx'"):
        export_to("onnx", folder, tmp_path / "x")


def test_sharded_folder_exports(tmp_path):
    import slimllm
    from export_helpers import calibration

    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=5)
    pruned, plan = slimllm.prune(tiny_llama(), None, config, data=calibration(), progress=False)
    slimllm.save(pruned, None, plan, tmp_path / "p", max_shard_size="100KB")
    assert (tmp_path / "p" / "model.safetensors.index.json").is_file()
    export_hf(tmp_path / "p", tmp_path / "hf")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        got = model(input_ids=IDS, use_cache=False).logits
    torch.testing.assert_close(got, reference_logits(tmp_path / "p", IDS), rtol=0, atol=1e-5)
    index = json.loads((tmp_path / "p" / "model.safetensors.index.json").read_text())
    (tmp_path / "p" / next(iter(index["weight_map"].values()))).unlink()
    with pytest.raises(ExportError, match="missing"):
        export_hf(tmp_path / "p", tmp_path / "hf2")


@pytest.mark.parametrize(
    ("family", "reason"),
    [("gemma3_text", "norms after o_proj"), ("olmo2", "norms after the attention"), ("qwen3", "q/k RMS norms"),
     ("phi3", "fused qkv_proj")],
)  # fmt: skip
def test_a_family_the_exporters_cannot_write_exactly_is_refused_with_the_reason(tmp_path, family, reason):
    import slimllm
    from slimllm.export import export_to
    from tiny_models import FAMILIES

    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=5)
    data = torch.randint(0, 96, (12, 24), generator=torch.Generator().manual_seed(7))
    pruned, plan = slimllm.prune(FAMILIES[family](), None, config, data=data, progress=False)
    slimllm.save(pruned, None, plan, tmp_path / "p")
    for target in ("gguf", "hf"):
        with pytest.raises(ExportError, match=f"{family} models cannot be exported exactly: .*{reason}"):
            export_to(target, tmp_path / "p", tmp_path / f"out-{target}")
        assert not (tmp_path / f"out-{target}").exists()
