"""Out-of-core pruning (:mod:`slimllm.offload`): the same output, bit for bit, as an in-memory
prune, with one decoder layer in memory at a time."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import slimllm
from slimllm import offload
from slimllm.config import ConfigError, PruneConfig
from slimllm.io import ModelSourceError
from tiny_models import FAMILIES, VOCAB, byte_tokenizer


def _folder(model, path: Path) -> Path:
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _windows():
    return torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))


def _prune_both(source: Path, tmp_path: Path, config: PruneConfig):
    """Prune ``source`` in memory and out of core; save both; return the two output folders and plans."""
    outputs, plans = [], []
    for on_disk in (False, True):
        model, tokenizer = slimllm.load(source, on_disk=on_disk)
        pruned, plan = slimllm.prune(model, tokenizer, config, _windows(), progress=False)
        if on_disk:  # nothing of the decoder stayed in memory: every parameter is a placeholder
            assert {p.device.type for p in pruned.parameters()} == {"meta"}
        output = tmp_path / ("disk" if on_disk else "memory")
        slimllm.save(pruned, tokenizer, plan, output)
        outputs.append(output)
        plans.append(plan)
    return outputs, plans


def _assert_same_model(first: Path, second: Path) -> None:
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_out_of_core_prune_equals_in_memory_prune(family, tmp_path):
    source = _folder(FAMILIES[family](), tmp_path / "dense")
    before = _digests(source)
    (memory, disk), (plan_memory, plan_disk) = _prune_both(source, tmp_path, PruneConfig(ratio=0.3))
    _assert_same_model(memory, disk)
    assert plan_disk.to_json()["layers"] == plan_memory.to_json()["layers"]
    assert _digests(source) == before  # the input model is never modified
    reloaded, _ = slimllm.load(disk)
    ids = _windows()[:2]
    with torch.no_grad():
        assert torch.isfinite(reloaded(input_ids=ids).logits).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "flap"},  # a prepare pass over every layer before pruning
        {"recovery": "ridge-layer"},  # the dense layer run alongside the pruned one
        {"method": "wanda-sp@slimllm", "ratio_of": "decoder"},
    ],
    ids=["flap", "ridge-layer", "wanda-sp"],
)
def test_out_of_core_equals_in_memory_for_other_methods(settings, tmp_path):
    source = _folder(FAMILIES["qwen2"](), tmp_path / "dense")
    (memory, disk), _ = _prune_both(source, tmp_path, PruneConfig.from_dict({"ratio": 0.3, **settings}))
    _assert_same_model(memory, disk)


def test_a_method_needing_the_whole_model_is_refused_out_of_core(tmp_path):
    source = _folder(FAMILIES["llama"](), tmp_path / "dense")
    model, tokenizer = slimllm.load(source, on_disk=True)
    with pytest.raises(ConfigError, match="needs the whole model in memory"):
        slimllm.prune(model, tokenizer, PruneConfig(ratio=0.3, method="taylor"), _windows(), progress=False)


def test_weights_stay_on_disk_only_for_folders_and_built_ins(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError, match="local safetensors folder"):
        slimllm.load(gguf, on_disk=True)


def test_a_piece_is_read_in_for_its_use_and_dropped_after(tmp_path):
    from slimllm.layer_walk import on_device

    source = _folder(FAMILIES["llama"](), tmp_path / "dense")
    model, _ = slimllm.load(source, on_disk=True)
    dense, _ = slimllm.load(source)
    layer = model.model.layers[1]
    assert offload.on_disk(layer) and layer.mlp.down_proj.weight.device.type == "meta"
    with on_device(layer, "cpu"):
        assert torch.equal(layer.mlp.down_proj.weight, dense.model.layers[1].mlp.down_proj.weight)
    assert offload.on_disk(layer) and layer.mlp.down_proj.weight.device.type == "meta"
    # the tied head keeps sharing the embeddings' weight through reading in and dropping
    with on_device(model.model.embed_tokens, "cpu"):
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert torch.equal(model.lm_head.weight, dense.lm_head.weight)
    assert model.lm_head.weight is model.model.embed_tokens.weight


# The peak of this process's own memory map (VmHWM), not getrusage's ru_maxrss: Linux carries the
# latter across fork and exec, so a child of a large pytest process would report pytest's size.
_PEAK_PROBE = """
import re, sys
from slimllm.cli import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
sys.exit(code)
"""


def _peak_rss_kb(source: Path, output: Path, calib: Path, *extra: str) -> int:
    command = [sys.executable, "-c", _PEAK_PROBE, "prune", str(source), "--ratio", "0.2", "--output", str(output)]
    command += ["--calib", str(calib), "--nsamples", "8", "--seqlen", "32", "--quiet", "--threads", "1", *extra]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(finished.stdout.strip().splitlines()[-1])


def test_peak_memory_is_flat_in_the_number_of_layers(tmp_path):
    """The same model with 8 and with 32 layers (3.9 MB each): out of core, the prune's peak
    memory grows by under 10%; in memory, the extra 24 layers show (the probe can tell)."""
    calib = tmp_path / "calib.txt"
    words = ["the", "of", "and", "a", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from"]
    generator = torch.Generator().manual_seed(0)
    calib.write_text(
        "\n\n".join(
            " ".join(words[int(i)] for i in torch.randint(len(words), (300,), generator=generator)) for _ in range(40)
        )
    )
    peaks = {}
    for layers in (8, 32):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=257, hidden_size=256, intermediate_size=1024, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        )  # fmt: skip
        source = _folder(LlamaForCausalLM(config), tmp_path / f"dense-{layers}")
        for mode in ("disk", "memory"):
            extra = ("--in-memory",) if mode == "memory" else ()
            peaks[mode, layers] = _peak_rss_kb(source, tmp_path / f"{mode}-{layers}", calib, *extra)
        report = json.loads((tmp_path / f"disk-{layers}" / "slimllm_report.json").read_text())
        assert report["out_of_core"] is True
        assert not (tmp_path / f".disk-{layers}.slimllm-work").exists()  # the pruned layers' files are gone
    assert peaks["disk", 32] < 1.10 * peaks["disk", 8], peaks  # the bound
    assert peaks["memory", 32] > 1.15 * peaks["memory", 8], peaks  # 24 layers × 3.9 MB are visible
    _assert_same_model(tmp_path / "disk-32", tmp_path / "memory-32")


# -- resuming ------------------------------------------------------------------------------------
class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("recovery", ["regression", "ridge-dense"])  # ridge-dense carries the dense states too
def test_an_interrupted_prune_resumes_to_the_uninterrupted_result(recovery, tmp_path, monkeypatch):
    from slimllm.layer_pruner import LayerPruner

    source = _folder(FAMILIES["qwen2"](), tmp_path / "dense")
    config = PruneConfig(ratio=0.3, options={"recovery": recovery})
    model, tokenizer = slimllm.load(source, on_disk=True)
    whole, whole_plan = slimllm.prune(model, tokenizer, config, _windows(), progress=False)
    slimllm.save(whole, tokenizer, whole_plan, tmp_path / "whole")

    work = tmp_path / "work"
    original = LayerPruner.__call__

    def interrupt_at_layer_2(self, index, *args):
        if index == 2:
            raise _Interrupted
        return original(self, index, *args)

    monkeypatch.setattr(LayerPruner, "__call__", interrupt_at_layer_2)
    model, tokenizer = slimllm.load(source, on_disk=True)
    with pytest.raises(_Interrupted):
        slimllm.prune(model, tokenizer, config, _windows(), progress=False, work_dir=work)
    monkeypatch.setattr(LayerPruner, "__call__", original)
    assert sorted(p.name for p in work.glob("*.record.safetensors")) == [
        "layer-00000.record.safetensors",
        "layer-00001.record.safetensors",
    ]

    calls = []
    monkeypatch.setattr(
        LayerPruner, "__call__", lambda self, index, *a: calls.append(index) or original(self, index, *a)
    )
    model, tokenizer = slimllm.load(source, on_disk=True)
    resumed, resumed_plan = slimllm.prune(
        model, tokenizer, config, _windows(), progress=False, work_dir=work, resume=True
    )
    assert calls == [2, 3]  # the finished layers are not pruned again
    slimllm.save(resumed, tokenizer, resumed_plan, tmp_path / "resumed")
    _assert_same_model(tmp_path / "whole", tmp_path / "resumed")
    assert resumed_plan.to_json()["layers"] == whole_plan.to_json()["layers"]
    # the report says its phase seconds cover the resumed part only; the layer rows keep every layer's
    assert resumed_plan.report["resumed"] == {"layers_from_work_folder": 2, "cosines_from_work_folder": True}
    assert "resumed" not in whole_plan.report
    assert [row["layer"] for row in resumed_plan.report["layers"]] == [0, 1, 2, 3]


def test_resuming_a_different_command_is_a_clear_error(tmp_path):
    source = _folder(FAMILIES["llama"](), tmp_path / "dense")
    work = tmp_path / "work"
    model, tokenizer = slimllm.load(source, on_disk=True)
    slimllm.prune(model, tokenizer, PruneConfig(ratio=0.3), _windows(), progress=False, work_dir=work)
    model, tokenizer = slimllm.load(source, on_disk=True)
    with pytest.raises(ConfigError, match=r"differs from the interrupted one.*ratio: 0.3 → 0.2"):
        slimllm.prune(model, tokenizer, PruneConfig(ratio=0.2), _windows(), progress=False, work_dir=work, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        slimllm.prune(
            model, tokenizer, PruneConfig(ratio=0.2), _windows(), progress=False, work_dir=tmp_path / "new", resume=True
        )


def test_a_killed_prune_process_resumes_to_the_uninterrupted_output(tmp_path):
    """SIGKILL a real ``slimllm prune`` once some layers are recorded; ``--resume`` finishes it,
    equal to an uninterrupted run; no output folder exists in between."""
    import signal
    import time

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=257, hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    source = _folder(LlamaForCausalLM(config), tmp_path / "dense")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(f"passage {i}: " + "the cat sat on the mat and looked at me " * 40 for i in range(40)))
    command = [sys.executable, "-m", "slimllm", "prune", str(source), "--ratio", "0.2", "--calib", str(calib)]
    command += ["--nsamples", "16", "--seqlen", "64", "--threads", "1", "--quiet"]
    subprocess.run([*command, "--output", str(tmp_path / "whole")], check=True, capture_output=True)

    output, work = tmp_path / "pruned", tmp_path / ".pruned.slimllm-work"
    process = subprocess.Popen(
        [*command, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (work / "layer-00002.record.safetensors").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the prune ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(work.glob("*.record.safetensors")))
    assert 3 <= finished < 12 and not output.exists()
    # hidden states are kept for the last finished layer only (and the next, if killed while it was recorded)
    assert 1 <= len(list(work.glob("*.hidden.safetensors"))) <= 2

    subprocess.run([*command, "--output", str(output), "--resume"], check=True, capture_output=True)
    _assert_same_model(tmp_path / "whole", output)
    assert not work.exists()
    whole_plan = json.loads((tmp_path / "whole" / "slimllm_plan.json").read_text())
    assert json.loads((output / "slimllm_plan.json").read_text())["layers"] == whole_plan["layers"]


def test_the_cli_refuses_resume_where_it_cannot_resume(tmp_path, capsys):
    from slimllm.cli import main

    source = _folder(FAMILIES["llama"](vocab_size=257), tmp_path / "dense")
    common = ["prune", str(source), "--ratio", "0.2", "--output", str(tmp_path / "out"), "--quiet"]
    assert main([*common, "--resume", "--in-memory"]) == 2
    assert "--resume continues an out-of-core prune; drop --in-memory" in capsys.readouterr().err
    assert main([*common, "--resume"]) == 2  # nothing was interrupted
    assert "nothing to resume" in capsys.readouterr().err
    assert main([*common, "--resume", "--method", "taylor"]) == 2  # taylor prunes in memory
    assert "is pruned in memory, which cannot resume" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
