"""What pruning buys in vLLM: dense models against their pruned folders behind `vllm serve`.

For each model this starts vLLM's OpenAI-compatible server on 127.0.0.1 (float32, eager, CPU) and
measures, at 1, 4 and 16 concurrent clients (each level sends max(8, 2 x clients) requests after
two warm-up requests; token-id prompts drawn with a fixed seed, so every model gets the same ones):

- generation: 64-token prompts, 64 generated tokens each (``ignore_eos``): generated tokens/s and
  requests/s over the wall time of the level;
- prompt processing: 512-token prompts, one generated token: prompt tokens/s;
- errors: requests that failed or returned another number of tokens than asked (every request is
  counted; none is retried).

Run it in a venv with vLLM and slimllm (CI's ``.venv-vllm``). Pruned folders with uneven
query->kv maps are exported with ``slimllm export --to vllm`` into ``--work`` first.

    python benchmarks/serve/vllm_serving.py \\
        --model smollm2-135m=smollm2-135m --model smollm2-20%=out/smollm2-20 \\
        --model gemma3-270m=gemma3-270m --model gemma3-20%-of-decoder=/work/runs/gemma-diagnosis/slimllm-20-best

``NAME=SOURCE``: a built-in name or a folder. Results: ``--out`` (default
``benchmarks/serve/results-vllm``) as ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVELS = (1, 4, 16)


def servable_folder(source: str, work: Path) -> Path:
    """The folder vLLM is given for ``source``: a built-in's cache folder, or a pruned folder as
    it is when its layers are regular, else its ``--to vllm`` export."""
    from slimllm.export.vllm import export_vllm
    from slimllm.io import BUILTIN_MODELS, builtin_folder
    from slimllm.serve.vllm_plugin import irregular_layers

    if source in BUILTIN_MODELS:
        return builtin_folder(source)
    folder = Path(source)
    shapes = json.loads((folder / "config.json").read_text()).get("layer_shapes")
    if not irregular_layers(shapes):
        return folder
    exported = work / f"{folder.name}-vllm"
    if not (exported / "config.json").is_file():
        export_vllm(folder, exported)
    return exported


def run_level(server, prompts: list[list[int]], max_tokens: int, clients: int) -> dict:
    def ask(prompt: list[int]) -> bool:
        try:
            return server.complete(prompt, max_tokens)["usage"]["completion_tokens"] == max_tokens
        except Exception:  # every failure is counted, none retried
            return False

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answered = list(pool.map(ask, prompts))
    wall = time.perf_counter() - start
    return {"requests": len(prompts), "errors": answered.count(False), "wall_s": wall}


def measure(server, vocab: int, seed: int) -> dict:
    rng = random.Random(seed)

    def prompts(count: int, length: int) -> list[list[int]]:
        return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(count)]

    for prompt in prompts(2, 64):  # warm-up
        server.complete(prompt, 8)
    levels = []
    for clients in LEVELS:
        count = max(8, 2 * clients)
        generation = run_level(server, prompts(count, 64), 64, clients)
        prefill = run_level(server, prompts(count, 512), 1, clients)
        levels.append(
            {
                "clients": clients,
                "requests": generation["requests"] + prefill["requests"],
                "errors": generation["errors"] + prefill["errors"],
                "generation_tok_s": count * 64 / generation["wall_s"],
                "requests_s": count / generation["wall_s"],
                "prompt_tok_s": count * 512 / prefill["wall_s"],
            }
        )
        print(f"  {clients:>2} clients: {levels[-1]}", flush=True)
    return {"levels": levels}


def markdown(results: dict) -> str:
    lines = [
        "# vLLM serving: dense vs pruned",
        "",
        f"vLLM {results['vllm']} (CPU build), {results['machine']}; `{results['command']}`.",
        "Generation: 64-token prompts, 64 tokens generated per request; prompt: 512-token prompts, one token.",
        "",
        "| model | decoder params | clients | generation tok/s | requests/s | prompt tok/s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        for level in model["levels"]:
            lines.append(
                f"| {model['name']} | {model['decoder_params']:,} | {level['clients']} | "
                f"{level['generation_tok_s']:.1f} | {level['requests_s']:.2f} | {level['prompt_tok_s']:.1f} | "
                f"{level['errors']}/{level['requests']} |"
            )
    return "\n".join(lines) + "\n"


def decoder_params(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                if ".layers." in name:
                    total += math.prod(handle.get_slice(name).get_shape())
    return total


def main(argv: list[str] | None = None) -> int:
    import vllm

    from slimllm.serve.vllm_server import VllmServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=SOURCE (built-in name or folder)")
    parser.add_argument("--work", default="out/serve-vllm", help="exported folders and server logs")
    parser.add_argument("--out", default=str(HERE / "results-vllm"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "command": "python benchmarks/serve/vllm_serving.py " + " ".join(f"--model {m}" for m in args.model),
        "vllm": vllm.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "models": [],
    }
    for item in args.model:
        name, _, source = item.partition("=")
        folder = servable_folder(source, work)
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
        print(f"{name}: vllm serve {folder}", flush=True)
        log = work / f"{name.replace('%', 'pct')}.log"
        with VllmServer(folder, log=log, args=("--max-model-len", "640")) as server:
            measured = measure(server, vocab, args.seed)
        results["models"].append(
            {
                "name": name,
                "folder": str(folder),
                "decoder_params": decoder_params(folder),
                "startup_s": server.startup_s,
                **measured,
            }
        )
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
