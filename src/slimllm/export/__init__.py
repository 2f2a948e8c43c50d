"""Export pruned folders for other runtimes: GGUF for llama.cpp, stock transformers folders.

Both exporters read the folder as files (``config.json`` + safetensors), not through slimllm's
model class, so they work on any folder written by ``slimllm.save`` and on stock LLaMA-family
folders (every layer dense).
"""

from slimllm.export.gguf import GGUFReport, export_gguf
from slimllm.export.hf import HFReport, export_hf
from slimllm.export.source import ExportError, load_source
from slimllm.export.targets import TARGETS, ExportTarget, export_to, register_target

__all__ = [
    "TARGETS",
    "ExportError",
    "ExportTarget",
    "GGUFReport",
    "HFReport",
    "export_gguf",
    "export_hf",
    "export_to",
    "load_source",
    "register_target",
]
