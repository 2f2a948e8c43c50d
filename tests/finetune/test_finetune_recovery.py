"""LoRA recovery (slimllm.finetune and `slimllm finetune`) on tiny random pruned models.

The model has an unevenly pruned first layer (3 query heads on 2 kv heads, FFN width 40, biases
on o_proj and down_proj, as the regression leaves them) and a dense second layer. The tokenizer is
a byte-level BPE trained here on a few words, so everything runs offline in seconds.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

import slimllm
from slimllm import SlimLlamaConfig, SlimLlamaForCausalLM
from slimllm.cli import main
from slimllm.config import ConfigError
from slimllm.finetune import (
    FINETUNE_LOG,
    DataFormatError,
    FinetuneConfig,
    attach_lora,
    build_trainer,
    finetune,
    lora_target_names,
    merge_lora,
    prepare_data,
)
from slimllm.finetune.data import (
    ALPACA_TEMPLATE,
    IGNORE_INDEX,
    build_prompt,
    detect_format,
    read_instruction_file,
    tokenize_examples,
)
from slimllm.io import OutputExistsError
from slimllm.plan import LayerPlan, PrunePlan

WORDS = ["the", "a", "fox", "dog", "cat", "runs", "jumps", "over", "under", "quick", "lazy", "brown", "red", "blue"]
PRUNED_LAYER = {"query_to_kv": [0, 1, 1], "intermediate_size": 40, "o_proj_bias": True, "down_proj_bias": True}
ANSWER = "the quick brown fox jumps over the lazy dog"


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator([*sentences(300), *ALPACA_TEMPLATE.values()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_model(vocab_size: int, layer_shapes=(PRUNED_LAYER, None)) -> SlimLlamaForCausalLM:
    torch.manual_seed(0)
    config = SlimLlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=len(layer_shapes),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        layer_shapes=list(layer_shapes),
    )
    model = SlimLlamaForCausalLM(config)
    with torch.no_grad():  # regression biases are non-zero in real pruned models
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()
    return model.eval()


def tiny_plan() -> PrunePlan:
    return PrunePlan(
        model_type="llama",
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        layers=[
            LayerPlan(0, kept_heads=[0, 2, 3], kept_kv_heads=[0, 1], query_to_kv=[0, 1, 1], kept_channels=[*range(40)]),
            LayerPlan(1, kept_heads=[0, 1, 2, 3], kept_kv_heads=[0, 1], query_to_kv=[0, 0, 1, 1], kept_channels=[]),
        ],
    )


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    """A learnable task: every instruction is answered with the same sentence."""
    rows = [
        {"instruction": f"say it: {text[:24]}", "input": "now" if i % 2 else "", "output": ANSWER}
        for i, text in enumerate(sentences(60, seed=1))
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "instructions.jsonl", rows)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A saved pruned model with its plan and report, as `slimllm prune` writes it."""
    folder = tmp_path_factory.mktemp("models") / "pruned"
    slimllm.save(tiny_model(len(tokenizer)), tokenizer, tiny_plan(), folder, report={"ratio": 0.2})
    return folder


def quick_config(**overrides) -> FinetuneConfig:
    settings = dict(
        max_steps=4, batch_size=4, micro_batch_size=2, learning_rate=1e-2, warmup_steps=0, eval_steps=2, val_size=8
    )
    return FinetuneConfig(**{**settings, **overrides})


def folder_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# -- data -------------------------------------------------------------------------------------
def test_prompt_masking_leaves_only_response_tokens(tokenizer):
    example = {"instruction": "name a colour", "input": "sky", "output": "blue sky"}
    columns, dropped = tokenize_examples(tokenizer, [example], ALPACA_TEMPLATE, cutoff=256)
    prompt = tokenizer(build_prompt(example, ALPACA_TEMPLATE))["input_ids"]
    response = [*tokenizer("blue sky", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert dropped == 0
    assert ids == prompt + response
    assert labels == [IGNORE_INDEX] * len(prompt) + response
    assert "### Input:\nsky" in build_prompt(example, ALPACA_TEMPLATE)


def test_train_on_prompt_learns_every_token_and_cutoff_truncates(tokenizer):
    example = {"instruction": "name a colour", "input": "", "output": " ".join(WORDS)}
    prompt_length = len(tokenizer(build_prompt(example, ALPACA_TEMPLATE))["input_ids"])
    columns, _ = tokenize_examples(tokenizer, [example], ALPACA_TEMPLATE, prompt_length + 3, train_on_prompt=True)
    assert columns["labels"][0] == columns["input_ids"][0]
    assert len(columns["input_ids"][0]) == prompt_length + 3


def test_examples_whose_prompt_fills_the_cutoff_are_dropped(tokenizer):
    short = {"instruction": "hi", "input": "", "output": "red"}
    long = {"instruction": " ".join(WORDS * 10), "input": "", "output": "red"}
    cutoff = len(tokenizer(build_prompt(short, ALPACA_TEMPLATE))["input_ids"]) + 2
    columns, dropped = tokenize_examples(tokenizer, [short, long], ALPACA_TEMPLATE, cutoff)
    assert dropped == 1
    assert len(columns["input_ids"]) == 1
    assert [label != IGNORE_INDEX for label in columns["labels"][0][-3:]] == [False, True, True]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "no examples"),
        ("empty.json", "  \n", "file is empty"),
        ("blank_lines.jsonl", "\n\n", "no examples"),
        ("no_output.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a"}', ":2: missing field 'output'"),
        ("no_instruction.json", '[{"input": "x", "output": "b"}]', r"example 0: missing field 'instruction'"),
        ("broken.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n', r":2: not valid JSON"),
        ("number.jsonl", '{"instruction": "a", "output": 3}\n', r"field 'output' must be a string"),
        ("object.json", '{"instruction": "a", "output": "b"}', "expected a JSON list"),
        ("not_object.jsonl", '["a", "b"]\n', "expected a JSON object"),
    ],
)
def test_bad_instruction_files_give_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError, match=message) as caught:
        read_instruction_file(path)
    assert name in str(caught.value)


def test_missing_data_file_and_unreachable_hub_give_clear_errors(tokenizer, tmp_path, monkeypatch):
    with pytest.raises(DataFormatError, match="not found"):
        prepare_data(tokenizer, str(tmp_path / "absent.jsonl"), FinetuneConfig())
    monkeypatch.setattr("slimllm.finetune.data.hub_reachable", lambda: False)
    with pytest.raises(DataFormatError, match=r"unreachable.*--data lambada"):
        prepare_data(tokenizer, "yahma/alpaca-cleaned", FinetuneConfig())


def test_format_is_detected_from_the_source(tmp_path):
    text_rows = write_jsonl(tmp_path / "text.jsonl", [{"text": "a fox"}])
    instruction_rows = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "a", "output": "b", "text": "c"}])
    detected = {source: detect_format(source) for source in ("lambada", "hf:wikitext", "notes.txt", text_rows)}
    assert set(detected.values()) == {"text"}
    assert detect_format(instruction_rows) == "alpaca"
    assert detect_format("yahma/alpaca-cleaned") == "alpaca"


def test_plain_text_is_cut_into_blocks_with_a_seeded_held_out_share(tokenizer, tmp_path):
    path = tmp_path / "novel.txt"
    path.write_text("\n\n".join(sentences(200)))
    data = prepare_data(tokenizer, str(path), FinetuneConfig(cutoff=32, val_size=5))
    total = data.info["total"]
    assert data.info["format"] == "text" and total >= 50
    assert (data.info["train"], data.info["validation"]) == (total - 5, 5)
    assert all(len(ids) == 32 for ids in data.train["input_ids"])
    assert data.train["labels"] == data.train["input_ids"]
    capped = prepare_data(tokenizer, str(path), FinetuneConfig(cutoff=32, val_size=2000))
    assert capped.info["validation"] == int(total * 0.1)
    again = prepare_data(tokenizer, str(path), FinetuneConfig(cutoff=32, val_size=5))
    other_seed = prepare_data(tokenizer, str(path), FinetuneConfig(cutoff=32, val_size=5, seed=7))
    assert again.validation["input_ids"] == data.validation["input_ids"]
    assert other_seed.validation["input_ids"] != data.validation["input_ids"]
    held_out = {tuple(ids) for ids in data.validation["input_ids"]}
    assert not held_out & {tuple(ids) for ids in data.train["input_ids"]}


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        FinetuneConfig(batch_size=10, micro_batch_size=4)
    with pytest.raises(ConfigError, match="4 × 8 processes"):
        FinetuneConfig(batch_size=16, micro_batch_size=4).gradient_accumulation_steps(world_size=8)
    assert FinetuneConfig().gradient_accumulation_steps(world_size=2) == 2
    assert FinetuneConfig.from_dict(FinetuneConfig().to_dict()) == FinetuneConfig()


# The recipe's defaults as the hand-written parser had them before it was built from FinetuneConfig.
PAPER_RECIPE = {
    "lora_r": 4,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_targets": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "epochs": 2.0,
    "max_steps": None,
    "learning_rate": 1e-4,
    "batch_size": 16,
    "micro_batch_size": 4,
    "cutoff": 256,
    "warmup_steps": 100,
    "train_on_prompt": False,
    "template": "alpaca",
    "data_format": "auto",
    "val_size": 2000,
    "eval_steps": 200,
    "best_by_validation": True,
    "save_total_limit": 2,
    "logging_steps": 1,
    "seed": 42,
    "precision": "auto",
    "gradient_checkpointing": False,
}
# Every flag of the old parser, one non-default value each, and the setting it must reach.
OLD_FLAGS = [
    (["--lora-r", "8"], "lora_r", 8),
    (["--lora-alpha", "32"], "lora_alpha", 32),
    (["--lora-dropout", "0.1"], "lora_dropout", 0.1),
    (["--lora-targets", "q_proj, v_proj"], "lora_targets", ("q_proj", "v_proj")),
    (["--epochs", "0.5"], "epochs", 0.5),
    (["--max-steps", "7"], "max_steps", 7),
    (["--lr", "3e-4"], "learning_rate", 3e-4),
    (["--batch-size", "8"], "batch_size", 8),
    (["--micro-batch-size", "2"], "micro_batch_size", 2),
    (["--cutoff", "64"], "cutoff", 64),
    (["--warmup-steps", "0"], "warmup_steps", 0),
    (["--train-on-prompt"], "train_on_prompt", True),
    (["--template", "t.json"], "template", "t.json"),
    (["--format", "text"], "data_format", "text"),
    (["--val-size", "0"], "val_size", 0),
    (["--eval-steps", "5"], "eval_steps", 5),
    (["--no-best"], "best_by_validation", False),
    (["--save-total-limit", "3"], "save_total_limit", 3),
    (["--logging-steps", "10"], "logging_steps", 10),
    (["--seed", "1"], "seed", 1),
    (["--precision", "bf16"], "precision", "bf16"),
    (["--gradient-checkpointing"], "gradient_checkpointing", True),
]


def parse_finetune(*flags: str):
    from slimllm.cli import build_parser
    from slimllm.commands.finetune import config_from_args

    args = build_parser().parse_args(["finetune", "m", "--data", "d", "--output", "o", *flags])
    return args, config_from_args(args)


def test_cli_defaults_are_the_dataclass_defaults_and_the_paper_recipe():
    args, config = parse_finetune()
    assert config == FinetuneConfig()
    assert config.to_dict() == {**PAPER_RECIPE, "lora_targets": list(PAPER_RECIPE["lora_targets"])}
    assert (args.merge, args.overwrite, args.resume, args.dtype, args.cpu) == (True, False, False, None, False)


@pytest.mark.parametrize(("flags", "name", "value"), OLD_FLAGS, ids=[flags[0] for flags, _, _ in OLD_FLAGS])
def test_every_old_finetune_flag_still_sets_its_setting(flags, name, value):
    _, config = parse_finetune(*flags)
    assert getattr(config, name) == value
    untouched = {key: val for key, val in config.to_dict().items() if key != name}
    expected = {key: val for key, val in FinetuneConfig().to_dict().items() if key != name}
    assert untouched == expected


def test_old_flags_cover_every_setting():
    assert {name for _, name, _ in OLD_FLAGS} == set(PAPER_RECIPE) == set(FinetuneConfig().to_dict())
    args, _ = parse_finetune("--best", "--no-merge")
    assert args.best_by_validation is True and args.merge is False


# -- LoRA on uneven layers --------------------------------------------------------------------
def test_lora_targets_every_projection_of_uneven_layers(tokenizer):
    model = tiny_model(len(tokenizer), layer_shapes=(PRUNED_LAYER, {**PRUNED_LAYER, "intermediate_size": 0}))
    names = lora_target_names(model, FinetuneConfig().lora_targets)
    # The second layer's FFN was pruned away entirely: nothing to adapt there.
    assert len(names) == 7 + 4
    assert not any(name.startswith("model.layers.1.mlp") for name in names)
    with pytest.raises(ConfigError, match=r"\['qkv'\] match no linear layer"):
        lora_target_names(model, ("q_proj", "qkv"))
    peft_model = attach_lora(model, FinetuneConfig())
    layer = peft_model.get_base_model().model.layers[0]
    assert layer.self_attn.q_proj.lora_B["default"].weight.shape == (3 * 8, 4)
    assert layer.self_attn.o_proj.lora_A["default"].weight.shape == (4, 3 * 8)
    assert layer.mlp.down_proj.lora_A["default"].weight.shape == (4, 40)


@pytest.fixture(scope="module")
def trained(tokenizer, instructions, tmp_path_factory):
    """A LoRA model trained a few steps on the instructions, with its losses before and after."""
    model = tiny_model(len(tokenizer))
    config = quick_config(max_steps=12, learning_rate=5e-2)
    data = prepare_data(tokenizer, instructions, config)
    peft_model = attach_lora(model, config)
    trainer = build_trainer(peft_model, tokenizer, data, config, tmp_path_factory.mktemp("work"), quiet=True)
    probe = data.train.select(range(8))
    before = trainer.evaluate(probe)["eval_loss"]
    trainer.train()
    after = trainer.evaluate(probe)["eval_loss"]
    base = tiny_model(len(tokenizer))
    return {"model": peft_model.eval(), "data": data, "before": before, "after": after, "base": base}


def test_a_few_steps_lower_the_training_loss(trained):
    assert trained["after"] < trained["before"] - 0.1


def test_merged_weights_give_the_same_logits_as_base_plus_adapter(trained):
    peft_model = copy.deepcopy(trained["model"])
    batch = torch.tensor([ids[:32] for ids in trained["data"].train["input_ids"][:2]])
    with torch.no_grad():
        adapted = peft_model(input_ids=batch, return_dict=True).logits
        merged_model = merge_lora(peft_model).eval()
        merged = merged_model(input_ids=batch).logits
        base = trained["base"](input_ids=batch).logits
    assert type(merged_model) is SlimLlamaForCausalLM
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapter did change the model
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    base_state, merged_state = trained["base"].state_dict(), merged_model.state_dict()
    assert base_state.keys() == merged_state.keys()
    for name, value in base_state.items():
        assert merged_state[name].shape == value.shape
        if name.endswith("bias"):  # frozen and untouched by merging
            assert torch.equal(merged_state[name], value)


# -- the command ------------------------------------------------------------------------------
def test_finetune_command_saves_a_reloadable_merged_folder(model_dir, instructions, tmp_path):
    output = tmp_path / "tuned"
    before = folder_bytes(model_dir)
    args = ["finetune", str(model_dir), "--data", instructions, "--output", str(output), "--quiet"]
    assert main([*args, "--max-steps", "4", "--eval-steps", "2", "--batch-size", "4", "--micro-batch-size", "2"]) == 0

    assert folder_bytes(model_dir) == before  # the input is only read
    assert not (tmp_path / "tuned.checkpoints").exists()
    log = json.loads((output / FINETUNE_LOG).read_text())
    assert log["status"] == "done" and log["model"]["pruned"] and "fine-tuned after pruning" in log["note"]
    assert [entry["step"] for entry in log["losses"]["train"]] == [1, 2, 3, 4]
    assert [entry["step"] for entry in log["losses"]["validation"]] == [0, 2, 4]
    assert log["data"]["validation"] == 6 and log["lora"]["modules"] == 14
    assert {"torch", "transformers", "peft"} <= log["versions"].keys()
    assert log["timings_s"]["total"] > 0
    report = json.loads((output / "slimllm_report.json").read_text())
    assert report["ratio"] == 0.2 and report["finetune"]["steps"] == 4
    assert PrunePlan.load(output).layers[0].kept_heads == [0, 2, 3]

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(output)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    assert reloaded.config.layer_shapes == original.config.layer_shapes
    q_before = original.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(reloaded.model.layers[0].self_attn.q_proj.weight, q_before)


def test_no_merge_saves_the_adapter_alone(model_dir, instructions, tmp_path):
    from peft import PeftModel

    output = tmp_path / "adapter"
    record = finetune(model_dir, instructions, output, quick_config(), merge=False, quiet=True)
    assert record["output"]["merged"] is False
    assert {"adapter_config.json", "adapter_model.safetensors", FINETUNE_LOG} <= set(folder_bytes(output))
    assert not (output / "model.safetensors").exists()
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(model_dir.resolve())
    base, _ = slimllm.load(model_dir)
    adapted = PeftModel.from_pretrained(base, output)
    assert adapted.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight.abs().sum() > 0


def test_existing_output_and_bad_data_fail_with_a_message(model_dir, tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["finetune", str(model_dir), "--data", "x.jsonl", "--output", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n')
    assert main(["finetune", str(model_dir), "--data", str(bad), "--output", str(tmp_path / "new")]) == 2
    assert "bad.jsonl:1: missing field 'output'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="overlaps the input"):
        finetune(model_dir, str(bad), model_dir / "inside", quick_config())


def test_an_interrupted_run_resumes_from_its_last_checkpoint(model_dir, instructions, tmp_path):
    import shutil

    config = quick_config(max_steps=6, eval_steps=3)
    work = tmp_path / "work"
    full = finetune(model_dir, instructions, tmp_path / "full", config, checkpoint_dir=work, keep_checkpoints=True)
    assert full["training"]["resumed_from"] is None and full["result"]["global_step"] == 6
    assert sorted(path.name for path in work.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    # Simulate a run stopped after step 3: its checkpoint-6 and output were never written.
    shutil.rmtree(work / "checkpoint-6")
    with pytest.raises(OutputExistsError, match="--resume"):
        finetune(model_dir, instructions, tmp_path / "resumed", config, checkpoint_dir=work, quiet=True)
    with pytest.raises(ConfigError, match="learning_rate"):
        changed = quick_config(max_steps=6, eval_steps=3, learning_rate=1e-3)
        finetune(model_dir, instructions, tmp_path / "resumed", changed, checkpoint_dir=work, resume=True, quiet=True)
    resumed = finetune(model_dir, instructions, tmp_path / "resumed", config, checkpoint_dir=work, resume=True)

    assert resumed["training"]["resumed_from"].endswith("checkpoint-3")
    assert resumed["result"]["global_step"] == 6
    assert [entry["step"] for entry in resumed["losses"]["train"]] == [*range(1, 7)]
    full_weights = slimllm.load(tmp_path / "full")[0].state_dict()
    resumed_weights = slimllm.load(tmp_path / "resumed")[0].state_dict()
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value)


def test_two_processes_train_as_one_ddp_group_and_one_writes(model_dir, instructions, tmp_path):
    import subprocess
    import sys

    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "slimllm", "finetune", str(model_dir), "--data", instructions, "--output", str(output)]
    command += ["--max-steps", "2", "--eval-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    log = json.loads((output / FINETUNE_LOG).read_text())
    assert log["training"]["world_size"] == 2
    assert log["training"]["gradient_accumulation_steps"] == 1  # 4 = 2 processes × micro-batch 2
    assert log["result"]["global_step"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ddp"]  # no stray temp or checkpoint folders
