"""WikiText-2 perplexity with a <bos> token before every window, for models trained to always see one.

`slimllm eval` follows the LLM-Pruner/SlimLLM protocol: the test text is tokenised once and cut
into 128-token windows, so only the first window starts with <bos>. Gemma models are trained with
<bos> first and score far worse without it (dense Gemma-3-270M: 386 PPL over the first 256
windows without, about 50 with). This script scores the same windows, each preceded by <bos>
(the <bos> is context only: every window still scores its 128 text tokens).

    python benchmarks/gemma3/ppl_bos.py gemma3-270m out/gemma3-270m-20 out/gemma3-270m-30 \
        --windows 256 --out benchmarks/gemma3/results/ppl_bos.json
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import slimllm
from slimllm.data.sources import load_text
from slimllm.eval.ppl import token_windows, tokenize_stream, window_nll
from slimllm.runtime import count_parameters, versions, write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    text, info = load_text("wikitext2", quiet=True)
    rows = []
    for source in args.models:
        start = time.perf_counter()
        model, tokenizer = slimllm.load(source)
        if tokenizer.bos_token_id is None:
            raise SystemExit(f"{source}: the tokenizer has no <bos> token")
        windows = token_windows(tokenize_stream(tokenizer, text), args.seqlen, args.windows)
        bos = torch.full((windows.shape[0], 1), tokenizer.bos_token_id, dtype=windows.dtype)
        nll, scored = window_nll(model, torch.cat([bos, windows], dim=1))
        rows.append(
            {
                "model": source,
                "parameters": count_parameters(model),
                "ppl": math.exp(nll / scored),
                "tokens_scored": scored,
                "wall_s": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
        del model
    report = {
        "protocol": f"first {args.windows} windows of {args.seqlen} WikiText-2 tokens, each after a <bos>",
        "data": info.to_dict(),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "models": rows,
    }
    write_json_atomic(args.out, report)


if __name__ == "__main__":
    main()
