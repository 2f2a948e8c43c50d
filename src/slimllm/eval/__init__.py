"""Evaluation of dense and pruned models as the structured-pruning papers report it.

    from slimllm.eval import EvalSettings, perplexity, zero_shot, evaluate_models
    ppl = perplexity(model, tokenizer, "wikitext2", seqlen=128)["ppl"]
    acc = zero_shot(model, tokenizer, ["piqa", "boolq"], limit=500, seed=0)
    report = evaluate_models(["smollm2-135m", "out/smollm2-20"], EvalSettings(ppl=("wikitext2",), tasks=TASKS))

lm-eval is imported only when zero-shot tasks run.
"""

from slimllm.eval.harness import HEADLINE_METRIC, TASKS, held_out_doc_ids, sample_doc_ids, zero_shot
from slimllm.eval.ppl import perplexity, perplexity_of_stream, token_windows
from slimllm.eval.report import markdown_report, print_table, write_json
from slimllm.eval.runner import count_parameters, evaluate_model, evaluate_models
from slimllm.eval.settings import EvalSettings

__all__ = [
    "HEADLINE_METRIC",
    "TASKS",
    "EvalSettings",
    "count_parameters",
    "evaluate_model",
    "evaluate_models",
    "held_out_doc_ids",
    "markdown_report",
    "perplexity",
    "perplexity_of_stream",
    "print_table",
    "sample_doc_ids",
    "token_windows",
    "write_json",
    "zero_shot",
]
