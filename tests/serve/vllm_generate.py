"""Greedy continuations and prompt log-probabilities of token-id prompts in vLLM, as JSON on stdout.

    python vllm_generate.py FOLDER PROMPTS_JSON MAX_TOKENS [TENSOR_PARALLEL_SIZE]

Run in its own process: vLLM starts engine processes with ``spawn`` (hence the main guard) and
keeps global state that one test process should not share across models.
"""

import json
import os
import sys


def main(folder: str, prompts: list[list[int]], max_tokens: int, tensor_parallel: int = 1) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if tensor_parallel > 1:  # one core per worker: vLLM's CPU backend otherwise wants a NUMA node each
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(core) for core in range(tensor_parallel)))
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=folder,
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        seed=0,
        tensor_parallel_size=tensor_parallel,
    )
    params = SamplingParams(temperature=0, max_tokens=max_tokens, prompt_logprobs=0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": prompt} for prompt in prompts], params)
    results = [
        {
            "tokens": list(output.outputs[0].token_ids),
            "prompt_logprobs": [
                entry[token].logprob for token, entry in zip(prompt[1:], output.prompt_logprobs[1:], strict=True)
            ],
        }
        for prompt, output in zip(prompts, outputs, strict=True)
    ]
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), *(int(arg) for arg in sys.argv[4:5]))
