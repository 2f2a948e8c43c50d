"""Pruned models served by vLLM equal transformers: greedy continuations token for token, prompt
log-probabilities within 1e-3 (float32), for tiny random models of every servable family with
uneven per-layer heads and FFN widths, and for the real SmolLM2-135M pruned by 20%; and
vLLM's OpenAI-compatible server (what ``vllm serve`` runs) answers concurrent requests with those continuations.

These tests need vLLM, which lives in its own venv (``.venv-vllm``: its transformers range is
narrower than ours), so they carry the ``vllm`` mark, which README's test command deselects; CI runs
them with ``pytest -m vllm`` in that venv, where under ``SLIMLLM_REQUIRE_VLLM=1`` a missing vLLM is
a failure. Selected without vLLM and without that variable, they skip with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import slimllm
from slimllm.export.vllm import export_vllm
from slimllm.serve.vllm_server import VllmServer
from tiny_models import EMPTY_KV, FAMILIES, UNEVEN, byte_tokenizer, pruned_random

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True, scope="module")
def _vllm_installed():
    """Checked when a test of this module runs, not when it is collected: deselected, nothing skips."""
    if os.environ.get("SLIMLLM_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401
    else:
        pytest.importorskip("vllm", reason="vLLM is not installed here (CI runs these tests in .venv-vllm)")


DRIVER = Path(__file__).with_name("vllm_generate.py")
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
# vLLM's CPU attention kernels take head sizes of 32 and up; the test families' default is 8
SHAPES = [UNEVEN, None, EMPTY_KV, {**UNEVEN, "query_to_kv": [0, 0, 1, 2, 2], "intermediate_size": 40}]
REGULAR_SHAPES = [{**UNEVEN, "query_to_kv": [0, 0, 0, 1, 1, 1]}, None, EMPTY_KV, {**UNEVEN, "query_to_kv": [0]}]
TINY_PROMPTS = [[5, 17, 33, 40, 2, 9, 71, 12], [60, 61, 62, 11]]


def vllm_outputs(folder: Path, prompts: list[list[int]], max_tokens: int, tensor_parallel: int = 1) -> list[dict]:
    run = subprocess.run(
        [sys.executable, str(DRIVER), str(folder), json.dumps(prompts), str(max_tokens), str(tensor_parallel)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULTS ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS ") :])


def transformers_outputs(model, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            generated = model.generate(
                ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0
            )
        results.append(
            {
                "tokens": generated[0, len(prompt) :].tolist(),
                "prompt_logprobs": [logprobs[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)],
            }
        )
    return results


def assert_same(served: list[dict], reference: list[dict]) -> None:
    for got, expected in zip(served, reference, strict=True):
        assert got["tokens"] == expected["tokens"]
        torch.testing.assert_close(
            torch.tensor(got["prompt_logprobs"], dtype=torch.float64),
            torch.tensor(expected["prompt_logprobs"], dtype=torch.float64),
            rtol=0,
            atol=1e-3,
        )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vllm_serves_every_family_like_transformers(family, tmp_path):
    # OLMo 2's uneven layers cannot be regrouped exactly (the export refuses them): serve regular ones
    shapes = REGULAR_SHAPES if family == "olmo2" else SHAPES
    model = pruned_random(family, shapes, seed=4, head_dim=32)
    slimllm.save(model, byte_tokenizer(), None, tmp_path / "pruned")
    served = tmp_path / "pruned"
    if family != "olmo2":
        export_vllm(served, tmp_path / "vllm")
        served = tmp_path / "vllm"
    assert_same(vllm_outputs(served, TINY_PROMPTS, 8), transformers_outputs(model, TINY_PROMPTS, 8))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two tensor-parallel workers need two CPU cores")
def test_vllm_splits_a_tensor_parallel_prune_over_two_workers(tmp_path):
    """``--tensor-parallel 2`` output served with vLLM's ``tensor_parallel_size=2`` (one core each)."""
    from slimllm.config import PruneConfig

    dense = FAMILIES["llama"](num_attention_heads=8, num_key_value_heads=4, intermediate_size=96, head_dim=32)
    data = torch.randint(0, dense.config.vocab_size, (8, 24), generator=torch.Generator().manual_seed(5))
    config = PruneConfig(ratio=0.3, nsamples=8, seqlen=24, gqa="group", options={"tensor_parallel": 2, "layers": 4})
    model, _ = slimllm.prune(dense, None, config, data=data, progress=False)
    slimllm.save(model, byte_tokenizer(), None, tmp_path / "pruned")
    assert export_vllm(tmp_path / "pruned", tmp_path / "vllm").tensor_parallel_sizes[:2] == [1, 2]
    assert_same(vllm_outputs(tmp_path / "vllm", TINY_PROMPTS, 8, 2), transformers_outputs(model, TINY_PROMPTS, 8))


@pytest.fixture(scope="module")
def smollm2_for_vllm(tmp_path_factory):
    """The bundled SmolLM2-135M pruned by 20% (slimllm's defaults), exported for vLLM."""
    root = tmp_path_factory.mktemp("smollm2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "slimllm",
            "prune",
            "smollm2-135m",
            "--ratio",
            "0.2",
            "--quiet",
            "--output",
            root / "pruned",
        ],
        check=True,
        timeout=1800,
    )
    export_vllm(root / "pruned", root / "vllm")
    model, tokenizer = slimllm.load(root / "pruned")
    return root / "vllm", model, tokenizer


TEXT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colours are",
]


@pytest.mark.real_model
def test_vllm_serves_pruned_smollm2_like_transformers(smollm2_for_vllm):
    folder, model, tokenizer = smollm2_for_vllm
    prompts = [tokenizer(text).input_ids for text in TEXT_PROMPTS]
    assert_same(vllm_outputs(folder, prompts, 16), transformers_outputs(model, prompts, 16))


@pytest.mark.real_model
def test_vllm_serve_answers_concurrent_openai_requests(smollm2_for_vllm, tmp_path):
    folder, model, tokenizer = smollm2_for_vllm
    prompts = [tokenizer(text).input_ids for text in TEXT_PROMPTS]
    expected = [tokenizer.decode(out["tokens"]) for out in transformers_outputs(model, prompts, 12)]
    requests = [i % len(prompts) for i in range(16)]
    server = VllmServer(folder, log=tmp_path / "serve.log", args=("--max-model-len", "256"), timeout=600)
    with server, ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: server.complete(prompts[i], 12)["choices"][0]["text"], requests))
    assert answers == [expected[i] for i in requests]
