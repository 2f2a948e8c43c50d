"""``slimllm export --to gguf``: llama.cpp (through llama-cpp-python) computes the pruned model's logits."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from export_helpers import (
    drop_attention,
    empty_ffn,
    layer_shapes,
    pruned_folder,
    reference_logits,
    remap_heads,
    tiny_tokenizer,
)
from slimllm.cli import main
from slimllm.export import ExportError, export_gguf
from slimllm.export.source import best_regroup, regroup, regroup_cost
from tiny_models import VOCAB

IDS = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(5))
TOL = 1e-3


# -- the GQA rewrite (no llama.cpp needed) --------------------------------------------------------
def test_regroup_keeps_every_query_head_once_and_groups_even():
    for query_to_kv in ([0, 0, 1, 2, 2, 2], [0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1], [0]):
        plan = best_regroup(query_to_kv)
        assert sorted(h for h in plan.query_src if h is not None) == list(range(len(query_to_kv)))
        assert len(plan.query_src) == plan.group * plan.num_kv_heads
        for slot, head in enumerate(plan.query_src):  # every slot reads a copy of its head's kv head
            if head is not None:
                assert plan.kv_src[slot // plan.group] == query_to_kv[head]
        assert regroup_cost(query_to_kv, plan.group) == min(
            regroup_cost(query_to_kv, g) for g in range(1, len(query_to_kv) + 1)
        )
    assert best_regroup([0, 0, 1, 1]).group == 2 and regroup_cost([0, 0, 1, 1], 2) == 0  # regular: unchanged
    assert best_regroup([0, 0, 1, 2, 2, 2]).group == 1  # 6 slots, 6 kv copies: +3 heads; g=2 or 3 costs more
    padded = regroup([0, 1, 1], 2, num_kv_heads=3)
    assert padded.kv_src == [0, 1, -1] and padded.query_src == [0, None, 1, 2, None, None]


# -- llama.cpp ------------------------------------------------------------------------------------
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'slimllm[serve]')")


def llama_logits(path, ids: list[int]) -> np.ndarray:
    f32 = llama_cpp.GGML_TYPE_F32  # llama.cpp keeps K and V in F16 by default; compare F32 with F32
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False, type_k=f32, type_v=f32
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def assert_matches(folder, gguf_path, ids=IDS):
    expected = reference_logits(folder, ids)[0].numpy()
    got = llama_logits(gguf_path, ids[0].tolist())
    diff = float(np.abs(got - expected).max())
    assert diff <= TOL, f"max |llama.cpp - PyTorch| = {diff:.2e}"
    return diff


@pytest.mark.parametrize("family,gqa", [("llama", "query"), ("llama", "group"), ("qwen2", "query"), ("qwen2", "group")])
def test_f32_gguf_matches_pytorch(tmp_path, family, gqa):
    folder = pruned_folder(tmp_path / "p", family, gqa=gqa, ratio=0.6)
    shapes = layer_shapes(folder)
    maps = [s["query_to_kv"] for s in shapes if s]
    assert any(max(m) + 1 < 2 for m in maps)  # a kv head removed
    assert any(s["o_proj_bias"] and s["down_proj_bias"] for s in shapes if s)  # both regression biases
    report = export_gguf(folder, tmp_path / "m.gguf", quant="f32")
    assert report.arch == "deci" and len(report.head_count) == 4
    assert_matches(folder, tmp_path / "m.gguf")


def test_uneven_map_empty_ffn_and_dense_layer(tmp_path):
    folder = pruned_folder(tmp_path / "p", "llama", gqa="query", ratio=0.3, layers=3)
    shapes = layer_shapes(folder)
    dense = [i for i, s in enumerate(shapes) if s is None or len(s["query_to_kv"]) == 6]
    pruned = [i for i in range(4) if i not in dense]
    assert dense and pruned
    # 6 heads on 2 kv heads -> uneven [0, 1, 1, 1, 1, 1]; an FFN of width 0 (attention kept) in two layers
    remap_heads(folder, {dense[0]: [0, 1, 1, 1, 1, 1]})
    empty_ffn(folder, dense[0])
    empty_ffn(folder, pruned[0])
    report = export_gguf(folder, tmp_path / "m.gguf", quant="f32", pad_ffn=1)
    assert report.feed_forward_length[dense[0]] == 1 and report.feed_forward_length[pruned[0]] == 1
    assert report.head_count[dense[0]] % report.head_count_kv[dense[0]] == 0
    assert_matches(folder, tmp_path / "m.gguf")
    padded = export_gguf(folder, tmp_path / "padded.gguf", quant="f32")  # default: widths padded to 32
    assert all(width % 32 == 0 for width in padded.feed_forward_length)
    assert_matches(folder, tmp_path / "padded.gguf")


def test_mistral_sliding_window_refused_or_capped(tmp_path):
    folder = pruned_folder(tmp_path / "p", "mistral", gqa="query", ratio=0.3)
    with pytest.raises(ExportError, match="sliding-window"):
        export_gguf(folder, tmp_path / "m.gguf", quant="f32")
    report = export_gguf(folder, tmp_path / "m.gguf", quant="f32", ignore_sliding_window=True)
    assert any("capped at 16" in note for note in report.notes)
    assert_matches(folder, tmp_path / "m.gguf", IDS[:, :16])  # window 16: exact up to 16 tokens


def test_tokenizer_quantisation_fallbacks_and_cli(tmp_path, capsys):
    folder = pruned_folder(tmp_path / "p", "llama", gqa="group", ratio=0.3)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(folder)
    out = tmp_path / "m-q8.gguf"
    command = ["export", str(folder), "--to", "gguf", "--quant", "q8_0", "--pad-ffn", "1", "--output", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "deci" in printed and "--pad-ffn 32" in printed  # hidden 48 and odd FFN widths are not multiples of 32
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, verbose=False)
    text = "the cat. The hat"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text)["input_ids"]
    assert llm.detokenize(tokenizer(text)["input_ids"]).decode() == text
    llm.close()
    report = export_gguf(folder, tmp_path / "again.gguf", quant="q8_0")
    assert report.fallbacks and all(row["row_length"] % 32 for row in report.fallbacks)
    assert all(row["type"] != "Q8_0" for row in report.fallbacks)
    assert not [row for row in report.fallbacks if "ffn_down" in row["tensor"]]  # FFN widths padded to 32
    assert main(["export", str(folder), "--to", "gguf", "--quant", "q3", "--output", str(tmp_path / "x.gguf")]) == 2
    assert "unknown --quant" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_openai_compatible_server_completes(tmp_path):
    pytest.importorskip("uvicorn", reason="llama-cpp-python[server] is not installed")
    folder = pruned_folder(tmp_path / "p", "llama", gqa="group", ratio=0.3)
    tiny_tokenizer().save_pretrained(folder)
    model = tmp_path / "m.gguf"
    export_gguf(folder, model, quant="f16")
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "64", "--n_threads", "2", "--flash_attn", "true"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {server.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        body = json.dumps({"prompt": "the cat", "max_tokens": 4, "temperature": 0}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            reply = json.loads(response.read())
        assert reply["object"] == "text_completion" and isinstance(reply["choices"][0]["text"], str)
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.real_model
@pytest.mark.evaluation_text
def test_real_smollm2_20_perplexity_in_llama_cpp_matches_pytorch(tmp_path):
    """SmolLM2-135M pruned by 20% (light calibration): llama.cpp's WikiText-2 perplexity over the
    first 64 windows of 128 tokens is within 1% of slimllm eval's on the same token ids."""
    import slimllm
    from slimllm.data.sources import load_text, tokenize_stream
    from slimllm.eval.ppl import perplexity_of_stream, token_windows
    from slimllm.export.runtime import window_nll

    model, tokenizer = slimllm.load("smollm2-135m")
    config = slimllm.PruneConfig(ratio=0.2, calib="lambada", nsamples=8, seqlen=32)
    pruned, plan = slimllm.prune(model, tokenizer, config, progress=False)
    slimllm.save(pruned, tokenizer, plan, tmp_path / "p")
    report = export_gguf(tmp_path / "p", tmp_path / "m.gguf", quant="f32")
    assert report.tokenizer.startswith("gpt2") and "chat template" in report.tokenizer

    text, _ = load_text("wikitext2", quiet=True)
    stream = tokenize_stream(tokenizer, text)
    torch_ppl = perplexity_of_stream(pruned, stream, seqlen=128, limit=64)["ppl"]
    total, scored = window_nll(tmp_path / "m.gguf", token_windows(stream, 128, 64), threads=2)
    llama_ppl = float(np.exp(total / scored))
    assert abs(llama_ppl / torch_ppl - 1) <= 0.01, (llama_ppl, torch_ppl)


@pytest.mark.parametrize("index,keep_bias", [(0, True), (1, False), (2, True)])
def test_layer_without_attention(tmp_path, index, keep_bias):
    """A layer whose heads are all pruned: written with head_count 0, or one zero head where llama.cpp
    needs one (layer 0 sets the head size; a head-free deci layer drops attn_output.bias)."""
    folder = pruned_folder(tmp_path / "p", "llama", gqa="query", ratio=0.3)
    reference, headless = drop_attention(folder, index, keep_bias=keep_bias)
    report = export_gguf(headless, tmp_path / "m.gguf", quant="f32")
    assert report.head_count[index] == (1 if index == 0 or keep_bias else 0)
    expected = reference_logits(reference, IDS)[0].numpy()
    got = llama_logits(tmp_path / "m.gguf", IDS[0].tolist())
    assert float(np.abs(got - expected).max()) <= TOL
