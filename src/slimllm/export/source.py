"""Read a model folder as files, and regularise per-layer head maps; shared by the exporters.

The exporters read ``config.json`` and the safetensors files directly instead of going through
slimllm's model class, so they depend only on the folder format written by ``slimllm.save``:

- ``model_type`` ``"slimllm_<family>"`` (a legacy ``"slimllm_llama"`` with ``qkv_bias: true``
  came from Qwen2) or a stock ``"llama"``/``"mistral"``/``"qwen2"`` folder (every layer dense);
- ``layer_shapes``: per layer ``null`` (dense) or ``{"query_to_kv", "intermediate_size",
  "o_proj_bias", "down_proj_bias"}``;
- stock LLaMA tensor names; a bias is present exactly when its tensor is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimllm.modeling import MODEL_TYPE_PREFIX, legacy_family
from slimllm.models import adapter_class, supported_model_types

# the families the exporters write exactly (each adapter says whether it is one, and why not)
FAMILIES = tuple(name for name in supported_model_types() if adapter_class(name).export_refusal is None)
PREFIX = MODEL_TYPE_PREFIX


class ExportError(ValueError):
    """The folder cannot be exported as asked; the message says why."""


@dataclass
class Layer:
    """One decoder layer's weights in Hugging Face layout (``out_features x in_features``)."""

    query_to_kv: list[int]
    q: torch.Tensor | None
    k: torch.Tensor | None
    v: torch.Tensor | None
    o: torch.Tensor | None
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    bias: dict[str, torch.Tensor] = field(default_factory=dict)  # keys: q, k, v, o, gate, up, down

    @property
    def num_heads(self) -> int:
        return len(self.query_to_kv)

    @property
    def num_kv_heads(self) -> int:
        return max(self.query_to_kv) + 1 if self.query_to_kv else 0

    @property
    def ffn_width(self) -> int:
        return self.down.shape[1]


@dataclass
class SourceModel:
    folder: Path
    config: dict
    family: str
    head_dim: int
    hidden_size: int
    layers: list[Layer]
    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor | None  # None when tied to the embeddings
    pruned: bool  # written by slimllm prune (model_type slimllm_*)

    @property
    def rms_norm_eps(self) -> float:
        return float(self.config.get("rms_norm_eps", 1e-6))

    def rope(self) -> dict:
        """RoPE parameters as one dict (transformers 5 ``rope_parameters``, or the legacy fields)."""
        params = dict(self.config.get("rope_parameters") or {})
        legacy = self.config.get("rope_scaling") or {}
        params = {**legacy, **params}
        params.setdefault("rope_theta", self.config.get("rope_theta", 10000.0))
        params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
        return params

    def sliding_window(self) -> int | None:
        """The attention window if any layer uses sliding-window attention, else None."""
        window = self.config.get("sliding_window")
        if window is None:
            return None
        if self.family == "qwen2" and not self.config.get("use_sliding_window", False):
            return None
        types = self.config.get("layer_types")
        if types is not None and "sliding_attention" not in types:
            return None
        return int(window)


def family_of(config: dict) -> tuple[str, bool]:
    """``(family, pruned)`` from ``config.json``."""
    model_type = str(config.get("model_type", ""))
    pruned = model_type.startswith(PREFIX)
    family = model_type[len(PREFIX) :] if pruned else model_type
    family = legacy_family(config) or family  # slimllm 0.1 wrote every family as slimllm_llama
    adapter = adapter_class(family)
    if adapter is not None and adapter.export_refusal is not None:
        raise ExportError(f"{family} models cannot be exported exactly: {adapter.export_refusal}")
    if family not in FAMILIES:
        raise ExportError(
            f"model_type {model_type!r} is not supported for export; supported: "
            + ", ".join(f"{f!r} or {PREFIX + f!r}" for f in FAMILIES)
        )
    return family, pruned


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in its index."""
    from safetensors import safe_open

    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as error:
            raise ExportError(f"{index}: not a safetensors index ({error})") from error
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    else:
        raise ExportError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise ExportError(f"{path} is listed in the index but missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[name] = handle.get_tensor(name)
        except Exception as error:  # safetensors raises its own error types for truncated/bad headers
            raise ExportError(f"cannot read {path}: {error} (truncated or not a safetensors file?)") from error
    return tensors


def load_source(folder: str | Path) -> SourceModel:
    """Read a slimllm or stock LLaMA-family folder into float32 tensors and per-layer records."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder} is not a model folder: no config.json")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ExportError(f"cannot read {config_path}: {error}") from error
    family, pruned = family_of(config)
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise ExportError(f"hidden_act {act!r} is not supported (llama.cpp's deci block and LLaMA use SiLU)")
    tensors = read_tensors(folder)
    n_layers = int(config["num_hidden_layers"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    shapes = config.get("layer_shapes") or [None] * n_layers
    if len(shapes) != n_layers:
        raise ExportError(f"config.json: layer_shapes has {len(shapes)} entries for {n_layers} layers")

    def take(name: str, shape: tuple[int, ...] | None = None, required: bool = True) -> torch.Tensor | None:
        tensor = tensors.get(name)
        if tensor is None:
            if required:
                raise ExportError(f"{folder}: tensor {name} is missing")
            return None
        if shape is not None and tuple(tensor.shape) != shape:
            raise ExportError(f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")
        return tensor.float()

    layers = []
    for i, shape in enumerate(shapes):
        shape = shape or {}
        groups = n_heads // n_kv
        query_to_kv = [int(x) for x in shape.get("query_to_kv", [h // groups for h in range(n_heads)])]
        width = int(shape.get("intermediate_size", config["intermediate_size"]))
        n_q = len(query_to_kv)
        n_k = max(query_to_kv) + 1 if query_to_kv else 0
        if n_q and sorted(set(query_to_kv)) != list(range(n_k)):
            raise ExportError(f"layer {i}: query_to_kv {query_to_kv} leaves a key/value head unused")
        p = f"model.layers.{i}."
        attn = n_q > 0
        layer = Layer(
            query_to_kv=query_to_kv,
            q=take(p + "self_attn.q_proj.weight", (n_q * head_dim, hidden), attn),
            k=take(p + "self_attn.k_proj.weight", (n_k * head_dim, hidden), attn),
            v=take(p + "self_attn.v_proj.weight", (n_k * head_dim, hidden), attn),
            o=take(p + "self_attn.o_proj.weight", (hidden, n_q * head_dim), attn),
            gate=take(p + "mlp.gate_proj.weight", (width, hidden)),
            up=take(p + "mlp.up_proj.weight", (width, hidden)),
            down=take(p + "mlp.down_proj.weight", (hidden, width)),
            attn_norm=take(p + "input_layernorm.weight", (hidden,)),
            ffn_norm=take(p + "post_attention_layernorm.weight", (hidden,)),
        )
        sizes = {"q": n_q * head_dim, "k": n_k * head_dim, "v": n_k * head_dim, "o": hidden}
        sizes |= {"gate": width, "up": width, "down": hidden}
        for key, size in sizes.items():
            module = "self_attn" if key in "qkvo" else "mlp"
            bias = take(f"{p}{module}.{key}_proj.bias", (size,), required=False)
            if bias is not None:
                layer.bias[key] = bias
        layers.append(layer)

    embed = take("model.embed_tokens.weight")
    vocab = int(config.get("vocab_size") or embed.shape[0])
    if tuple(embed.shape) != (vocab, hidden):
        raise ExportError(
            f"{folder}: model.embed_tokens.weight has shape {tuple(embed.shape)}, expected {(vocab, hidden)}"
        )
    lm_head = take("lm_head.weight", (vocab, hidden), required=False)
    if lm_head is None and not config.get("tie_word_embeddings", False):
        raise ExportError(f"{folder}: lm_head.weight is missing and tie_word_embeddings is false")
    if config.get("tie_word_embeddings", False):
        lm_head = None
    return SourceModel(
        folder=folder,
        config=config,
        family=family,
        head_dim=head_dim,
        hidden_size=hidden,
        layers=layers,
        embed=embed,
        norm=take("model.norm.weight", (hidden,)),
        lm_head=lm_head,
        pruned=pruned,
    )


# -- grouped-query maps --------------------------------------------------------------------------
@dataclass
class Regrouped:
    """A layer rewritten so every kv head serves ``group`` consecutive query slots.

    ``query_src[s]`` is the original query head in slot ``s`` (None: a zero slot);
    ``kv_src[j]`` is the original kv head copied into kv slot ``j``; slot ``s`` reads kv ``s // group``.
    """

    group: int
    query_src: list[int | None]
    kv_src: list[int]

    @property
    def num_heads(self) -> int:
        return len(self.query_src)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_src)


def regroup(query_to_kv: list[int], group: int, num_kv_heads: int | None = None) -> Regrouped:
    """Rewrite a query->kv map with group size ``group``: kv head j (serving s_j queries) is copied
    ceil(s_j / group) times and each copy gets ``group`` slots, unfilled slots zero. With
    ``num_kv_heads``, zero kv heads (and their zero query slots) pad the layer to that many."""
    members: dict[int, list[int]] = {}
    for head, kv in enumerate(query_to_kv):
        members.setdefault(kv, []).append(head)
    query_src: list[int | None] = []
    kv_src: list[int] = []
    for kv in sorted(members):
        heads = members[kv]
        for start in range(0, len(heads), group):
            chunk = heads[start : start + group]
            kv_src.append(kv)
            query_src.extend(chunk + [None] * (group - len(chunk)))
    if num_kv_heads is not None:
        if num_kv_heads < len(kv_src):
            raise ValueError(f"cannot pad {len(kv_src)} kv heads down to {num_kv_heads}")
        while len(kv_src) < num_kv_heads:
            kv_src.append(-1)  # a zero kv head
            query_src.extend([None] * group)
    return Regrouped(group, query_src, kv_src)


def regroup_cost(query_to_kv: list[int], group: int) -> int:
    """Extra heads that :func:`regroup` adds (query slots + kv copies; each weighs 2 x hidden x head_dim)."""
    counts: dict[int, int] = {}
    for kv in query_to_kv:
        counts[kv] = counts.get(kv, 0) + 1
    copies = sum(math.ceil(s / group) for s in counts.values())
    return (copies * group - len(query_to_kv)) + (copies - len(counts))


def best_regroup(query_to_kv: list[int], *, fewest_kv: bool = False) -> Regrouped:
    """The group size with the fewest extra parameters (ties: fewer query slots, or with
    ``fewest_kv`` fewer key/value heads, i.e. a smaller KV cache; then larger groups).
    A regular map (equal consecutive groups) comes back unchanged at no cost."""
    if not query_to_kv:
        return Regrouped(1, [], [])
    counts: dict[int, int] = {}
    for kv in query_to_kv:
        counts[kv] = counts.get(kv, 0) + 1

    def key(g: int) -> tuple[int, int, int]:
        copies = sum(math.ceil(s / g) for s in counts.values())
        return (regroup_cost(query_to_kv, g), copies if fewest_kv else copies * g, -g)

    group = min(range(1, max(counts.values()) + 1), key=key)
    return regroup(query_to_kv, group)


def gather_heads(weight: torch.Tensor, sources: list[int | None], head_dim: int, dim: int = 0) -> torch.Tensor:
    """Heads of ``weight`` along ``dim`` in the order ``sources`` (None or -1: a zero head)."""
    pieces = []
    for src in sources:
        if src is None or src < 0:
            shape = list(weight.shape)
            shape[dim] = head_dim
            pieces.append(weight.new_zeros(shape))
        else:
            pieces.append(weight.narrow(dim, src * head_dim, head_dim))
    if not pieces:
        shape = list(weight.shape)
        shape[dim] = 0
        return weight.new_zeros(shape)
    return torch.cat(pieces, dim=dim)


def decoder_parameters(layers: list[Layer]) -> int:
    """Parameters of the decoder layers (weights, biases, norms)."""
    total = 0
    for layer in layers:
        for tensor in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down):
            total += tensor.numel() if tensor is not None else 0
        total += layer.attn_norm.numel() + layer.ffn_norm.numel() + sum(b.numel() for b in layer.bias.values())
    return total
