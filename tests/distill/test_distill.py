"""Distillation (slimllm.distill and `slimllm distill`) on a tiny random teacher and its pruned student.

The maths is checked against direct computations on materialised probabilities (float64); the
run against what a user relies on: the held-out KL falls, an interrupted run resumes to the same
weights, a cached top-k teacher with k = V trains exactly as the resident one, and the output
reloads with the logits it was saved with.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

import slimllm
from slimllm.cli import main
from slimllm.config import ConfigError
from slimllm.data.sources import DataSourceError
from slimllm.distill import DISTILL_LOG, DISTILL_PLOT, DistillConfig, distill
from slimllm.distill.loss import (
    IGNORE_INDEX,
    TopK,
    hidden_state_distance,
    next_token_nll,
    scored_positions,
    token_kl,
    topk_kl,
)
from slimllm.distill.trainer import BudgetCallback, DistillationLoss, DistillationTrainer
from slimllm.finetune.data import DataFormatError
from slimllm.io import ModelSourceError, OutputExistsError
from slimllm.plan import PrunePlan
from tiny_models import byte_tokenizer, tiny_llama, tiny_qwen2

VOCAB = 257  # the byte tokenizer's
WORDS = ["the", "a", "fox", "dog", "cat", "runs", "jumps", "over", "under", "quick", "lazy", "brown", "red", "blue"]


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(10)) + "." for _ in range(count)]


# -- the maths against direct computations ------------------------------------------------------
def direct_kl(teacher_logits, student_logits, temperature=1.0):
    """Σ p log(p / q) from probabilities built by hand in float64, position by position."""
    p = torch.exp(teacher_logits.double() / temperature)
    p = p / p.sum(-1, keepdim=True)
    q = torch.exp(student_logits.double() / temperature)
    q = q / q.sum(-1, keepdim=True)
    return (p * (p.log() - q.log())).sum(-1) * temperature**2


def logits_pair(shape=(2, 5, 11), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 3, torch.randn(shape, generator=generator) * 3


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_token_kl_is_the_kl_of_the_softmaxes(temperature):
    teacher, student = logits_pair()
    torch.testing.assert_close(
        token_kl(student, teacher, temperature).double(), direct_kl(teacher, student, temperature), rtol=1e-5, atol=1e-6
    )


def test_topk_kl_is_the_kl_of_the_coarsened_distributions():
    teacher, student = logits_pair()
    vocab = teacher.shape[-1]
    full = TopK.from_logits(teacher, vocab)
    torch.testing.assert_close(topk_kl(student, full).double(), direct_kl(teacher, student), rtol=1e-5, atol=1e-6)

    k = 3
    top = TopK.from_logits(teacher, k, temperature=1.5)
    p = torch.softmax(teacher.double() / 1.5, -1)
    q = torch.softmax(student.double() / 1.5, -1)
    expected = torch.zeros(teacher.shape[:-1], dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in teacher.shape[:-1])):
        b, t = index.tolist()
        kept = teacher[b, t].topk(k).indices
        rest = torch.ones(vocab, dtype=torch.bool)
        rest[kept] = False
        p_coarse = torch.cat([p[b, t, kept], p[b, t, rest].sum().view(1)])
        q_coarse = torch.cat([q[b, t, kept], q[b, t, rest].sum().view(1)])
        expected[b, t] = (p_coarse * (p_coarse / q_coarse).log()).sum() * 1.5**2
    got = topk_kl(student, top, temperature=1.5).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got <= direct_kl(teacher, student, 1.5) + 1e-6).all()  # coarsening never raises a KL


def test_topk_kl_with_every_token_has_finite_zero_gradients_at_the_teacher():
    teacher, _ = logits_pair()
    student = teacher.clone().requires_grad_(True)
    loss = topk_kl(student, TopK.from_logits(teacher, teacher.shape[-1])).mean()
    loss.backward()
    assert loss.abs().item() < 1e-6
    assert torch.isfinite(student.grad).all() and student.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_fused_kl_and_nll_equal_the_autograd_forms_in_value_and_gradient(temperature):
    from slimllm.distill.loss import kl_and_nll, next_tokens

    teacher, student = logits_pair(shape=(3, 7, 13), seed=5)
    labels = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(6))
    labels[1, :4] = IGNORE_INDEX
    weights = torch.rand(2, 3, 7, generator=torch.Generator().manual_seed(7))

    fused_input = student.clone().requires_grad_(True)
    kl, nll, agree = kl_and_nll(fused_input, teacher, next_tokens(labels), temperature, chunk=4)  # chunks cut rows
    ((kl * weights[0]).sum() + (nll * weights[1]).sum()).backward()

    reference_input = student.clone().requires_grad_(True)
    reference_kl = token_kl(reference_input, teacher, temperature)
    reference_nll = next_token_nll(reference_input, labels)
    ((reference_kl * weights[0]).sum() + (reference_nll * weights[1]).sum()).backward()

    torch.testing.assert_close(kl, reference_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nll, reference_nll, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_input.grad, reference_input.grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(agree, student.argmax(-1) == teacher.argmax(-1))


def test_next_token_nll_and_scored_positions():
    _, student = logits_pair()
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    labels[0, :3] = IGNORE_INDEX  # a masked prompt
    mask = scored_positions(labels)
    assert mask.tolist() == [[False, False, True, True, False], [True, True, True, True, False]]
    nll = next_token_nll(student, labels)
    for b in range(2):
        for t in range(4):
            if mask[b, t]:
                expected = -torch.log_softmax(student[b, t].double(), -1)[labels[b, t + 1]]
                torch.testing.assert_close(nll[b, t].double(), expected, rtol=1e-5, atol=1e-6)
            else:
                assert nll[b, t] == 0


def test_hidden_state_distance_is_relative_squared_error_per_layer():
    generator = torch.Generator().manual_seed(2)
    student = [torch.randn(2, 4, 3, generator=generator) for _ in range(2)]
    teacher = [torch.randn(2, 4, 3, generator=generator) * (1 + layer) for layer in range(2)]
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    expected = []
    for s, t in zip(student, teacher, strict=True):
        rows = [(b, i) for b in range(2) for i in range(4) if mask[b, i]]
        error = sum(((s[b, i] - t[b, i]) ** 2).sum() for b, i in rows)
        scale = sum((t[b, i] ** 2).sum() for b, i in rows)
        expected.append(error / scale)
    torch.testing.assert_close(hidden_state_distance(student, teacher, mask), torch.stack(expected).mean())
    with pytest.raises(ValueError, match="as many layers"):
        hidden_state_distance(student, teacher[:1], mask)


def test_objective_is_the_mean_over_scored_positions_of_each_term():
    teacher, student = logits_pair()
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(3))
    labels[1, 4] = IGNORE_INDEX
    mask = scored_positions(labels)
    config = DistillConfig(temperature=2.0, ce_weight=0.5)
    loss, sums = DistillationLoss(config)(student, teacher, labels)
    kl = direct_kl(teacher, student, 2.0)[mask]
    nll = torch.stack(
        [-torch.log_softmax(student[b, t].double(), -1)[labels[b, t + 1]] for b, t in mask.nonzero().tolist()]
    )
    torch.testing.assert_close(loss.double(), kl.mean() + 0.5 * nll.mean(), rtol=1e-5, atol=1e-6)
    count, kl_sum, nll_sum, agree = sums.tolist()
    assert count == mask.sum().item()
    assert agree == (student.argmax(-1) == teacher.argmax(-1))[mask].sum().item()
    assert kl_sum == pytest.approx(kl.sum().item() / 4.0 * 4.0, rel=1e-5)  # τ² included
    assert nll_sum == pytest.approx(nll.sum().item(), rel=1e-5)


def test_a_student_identical_to_the_teacher_has_zero_loss_and_zero_gradient():
    teacher = tiny_llama(vocab_size=VOCAB, initializer_range=0.3)
    student = copy.deepcopy(teacher).train()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        teacher_out = teacher(input_ids=ids, output_hidden_states=True)
    out = student(input_ids=ids, output_hidden_states=True)
    objective = DistillationLoss(DistillConfig(temperature=2.0, hidden_weight=1.0))
    loss, _ = objective(out.logits, teacher_out.logits, ids, out.hidden_states[1:], teacher_out.hidden_states[1:])
    loss.backward()
    assert abs(loss.item()) < 1e-6
    largest = max(param.grad.abs().max().item() for param in student.parameters() if param.grad is not None)
    assert largest < 1e-6


# -- a tiny teacher, its pruned student, and text ------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A dense tiny LLaMA teacher folder and its 30%-pruned student folder, sharing a byte tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = byte_tokenizer()
    teacher = tiny_llama(vocab_size=VOCAB, initializer_range=0.1)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    windows = torch.randint(0, VOCAB, (12, 24), generator=torch.Generator().manual_seed(7))
    config = slimllm.PruneConfig(ratio=0.3, nsamples=12, seqlen=24, batch_size=6)
    pruned, plan = slimllm.prune(teacher, tokenizer, config, data=windows, progress=False)
    slimllm.save(pruned, tokenizer, plan, root / "student")
    return {"teacher": root / "teacher", "student": root / "student", "root": root}


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "story.txt"
    path.write_text("\n\n".join(sentences(120)))
    return str(path)


def quick(**overrides) -> DistillConfig:
    settings = dict(
        max_steps=6, batch_size=4, micro_batch_size=2, learning_rate=1e-3, warmup_steps=0, eval_steps=3, cutoff=32
    )
    settings["val_size"] = 8
    return DistillConfig(**{**settings, **overrides})


def folder_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def capture_saved_model(monkeypatch) -> dict:
    """The model object ``distill`` writes, captured on its way to the output folder."""
    import slimllm.distill.run as run

    saved = {}
    original = run.write_model

    def spy(model, *args, **kwargs):
        saved["model"] = copy.deepcopy(model).eval()
        return original(model, *args, **kwargs)

    monkeypatch.setattr(run, "write_model", spy)
    return saved


def run_cli(models, text, output, *flags) -> int:
    return main(
        [
            "distill",
            str(models["student"]),
            "--teacher",
            str(models["teacher"]),
            "--data",
            text,
            "--output",
            str(output),
            *list(flags),
        ]
    )


@pytest.fixture(scope="module")
def cli_run(models, text, tmp_path_factory):
    output = tmp_path_factory.mktemp("out") / "distilled"
    before = {name: folder_bytes(models[name]) for name in ("student", "teacher")}
    flags = ["--max-steps", "8", "--eval-steps", "4", "--batch-size", "4", "--micro-batch-size", "2"]
    flags += ["--lr", "1e-3", "--warmup-steps", "0", "--cutoff", "32", "--val-size", "8", "--quiet"]
    assert run_cli(models, text, output, *flags) == 0
    return {"output": output, "before": before, "log": json.loads((output / DISTILL_LOG).read_text())}


def test_a_few_steps_lower_the_held_out_kl(cli_run):
    held_out = cli_run["log"]["losses"]["validation"]
    assert [entry["step"] for entry in held_out] == [0, 4, 8]
    assert held_out[0]["kl"] > 0
    assert min(entry["kl"] for entry in held_out[1:]) < 0.8 * held_out[0]["kl"]
    assert cli_run["log"]["result"]["best_validation_loss"] == min(entry["kl"] for entry in held_out)


def test_the_log_has_every_step_with_tokens_time_and_memory(cli_run):
    log = cli_run["log"]
    train = log["losses"]["train"]
    assert [entry["step"] for entry in train] == [*range(1, 9)]
    assert [entry["num_input_tokens_seen"] for entry in train] == [4 * 32 * step for step in range(1, 9)]
    assert all(entry["kl"] > 0 and entry["peak_rss_gb"] > 0 for entry in train)
    seconds = [entry["train_seconds"] for entry in train]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert log["result"]["tokens_seen"] == 8 * 4 * 32 and log["result"]["stopped_by"] == "max_steps"
    assert log["student"]["pruned"] and log["student"]["trainable_parameters"] == log["student"]["parameters"]
    assert log["teacher"]["resident"] is True
    assert (cli_run["output"] / DISTILL_PLOT).stat().st_size > 1000


def test_the_output_is_a_pruned_folder_and_the_inputs_are_untouched(cli_run, models):
    output = cli_run["output"]
    for name in ("student", "teacher"):
        assert folder_bytes(models[name]) == cli_run["before"][name]
    assert not output.with_name(output.name + ".checkpoints").exists()
    kept = [(layer.kept_heads, layer.kept_channels) for layer in PrunePlan.load(models["student"]).layers]
    assert [(layer.kept_heads, layer.kept_channels) for layer in PrunePlan.load(output).layers] == kept
    report = json.loads((output / "slimllm_report.json").read_text())
    assert report["distill"]["steps"] == 8 and "distillation" in report["distill"]["note"]
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(output)
    original = AutoModelForCausalLM.from_pretrained(models["student"])
    assert reloaded.config.layer_shapes == original.config.layer_shapes
    assert not torch.equal(reloaded.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)


def test_the_output_reloads_with_the_logits_it_was_saved_with(models, text, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    saved = capture_saved_model(monkeypatch)
    output = tmp_path / "out"
    distill(models["student"], models["teacher"], text, output, quick(max_steps=2), quiet=True)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = saved["model"](input_ids=ids).logits
        for reloaded in (slimllm.load(output)[0], AutoModelForCausalLM.from_pretrained(output)):
            torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(models, text, tmp_path, monkeypatch):
    config = quick(max_steps=6, eval_steps=3)
    full = distill(models["student"], models["teacher"], text, tmp_path / "full", config, quiet=True)
    assert full["result"]["global_step"] == 6

    original_step = DistillationTrainer.training_step

    def interrupted(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise KeyboardInterrupt  # killed after checkpoint-3 was written
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "training_step", interrupted)
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        distill(models["student"], models["teacher"], text, tmp_path / "resumed", config, checkpoint_dir=work)
    assert not (tmp_path / "resumed").exists()  # no half-written output
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".resumed")] == []
    assert sorted(path.name for path in work.glob("checkpoint-*")) == ["checkpoint-3"]
    monkeypatch.setattr(DistillationTrainer, "training_step", original_step)

    with pytest.raises(OutputExistsError, match="--resume"):
        distill(models["student"], models["teacher"], text, tmp_path / "resumed", config, checkpoint_dir=work)
    with pytest.raises(ConfigError, match="temperature"):
        changed = quick(max_steps=6, eval_steps=3, temperature=2.0)
        distill(
            models["student"], models["teacher"], text, tmp_path / "resumed", changed, checkpoint_dir=work, resume=True
        )
    resumed = distill(
        models["student"], models["teacher"], text, tmp_path / "resumed", config, checkpoint_dir=work, resume=True
    )
    assert resumed["training"]["resumed_from"].endswith("checkpoint-3")
    assert [entry["step"] for entry in resumed["losses"]["train"]] == [*range(1, 7)]
    full_weights = slimllm.load(tmp_path / "full")[0].state_dict()
    resumed_weights = slimllm.load(tmp_path / "resumed")[0].state_dict()
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=0, atol=1e-6)


def test_a_cached_teacher_with_every_token_trains_as_the_resident_one(models, text, tmp_path):
    resident = distill(models["student"], models["teacher"], text, tmp_path / "resident", quick(max_steps=3))
    cached = distill(
        models["student"], models["teacher"], text, tmp_path / "cached", quick(max_steps=3, teacher_topk=VOCAB)
    )
    assert cached["teacher"]["resident"] is False
    for a, b in zip(resident["losses"]["validation"], cached["losses"]["validation"], strict=True):
        assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-6)
    resident_weights = slimllm.load(tmp_path / "resident")[0].state_dict()
    cached_weights = slimllm.load(tmp_path / "cached")[0].state_dict()
    for name, value in resident_weights.items():
        torch.testing.assert_close(cached_weights[name], value, rtol=1e-4, atol=1e-5)


def test_a_small_top_k_cache_still_lowers_the_kl_and_is_reused_on_resume(models, text, tmp_path):
    from slimllm.distill.run import TOPK_CACHE

    work = tmp_path / "work"
    config = quick(max_steps=6, teacher_topk=8)
    record = distill(
        models["student"], models["teacher"], text, tmp_path / "out", config, checkpoint_dir=work, keep_checkpoints=True
    )
    held_out = record["losses"]["validation"]
    assert held_out[-1]["kl"] < held_out[0]["kl"]
    shards = sorted((work / TOPK_CACHE).glob("shard-*.safetensors"))
    assert shards
    stamps = [path.stat().st_mtime_ns for path in shards]
    again = tmp_path / "again"
    teacher = models["teacher"]
    distill(models["student"], teacher, text, again, config, checkpoint_dir=work, resume=True, keep_checkpoints=True)
    assert [path.stat().st_mtime_ns for path in shards] == stamps  # read back, not recomputed


def test_lora_trains_adapters_and_saves_merged_pruned_weights(models, text, tmp_path):
    record = distill(models["student"], models["teacher"], text, tmp_path / "lora", quick(lora=True, max_steps=2))
    assert 0 < record["student"]["trainable_parameters"] < record["student"]["parameters"] / 5
    reloaded, _ = slimllm.load(tmp_path / "lora")
    assert type(reloaded).__name__ == "SlimLlamaForCausalLM"
    assert not any("lora" in name for name in reloaded.state_dict())


def test_freeze_embeddings_keeps_them(models, text, tmp_path):
    distill(models["student"], models["teacher"], text, tmp_path / "frozen", quick(max_steps=2, freeze_embeddings=True))
    before, after = slimllm.load(models["student"])[0], slimllm.load(tmp_path / "frozen")[0]
    assert torch.equal(before.get_input_embeddings().weight, after.get_input_embeddings().weight)
    assert not torch.equal(before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight)


def test_hidden_state_matching_and_next_token_mix_train(models, text, tmp_path):
    record = distill(
        models["student"],
        models["teacher"],
        text,
        tmp_path / "mixed",
        quick(max_steps=2, hidden_weight=1.0, ce_weight=0.5),
    )
    train = record["losses"]["train"]
    assert all(entry["loss"] > entry["kl"] for entry in train)  # the extra terms are in the loss


# -- budgets ------------------------------------------------------------------------------------
def test_a_token_budget_sets_the_schedule_and_stops_there(models, text, tmp_path):
    record = distill(
        models["student"], models["teacher"], text, tmp_path / "tokens", quick(max_steps=None, max_tokens=3 * 128)
    )
    assert record["training"]["max_steps"] == 3
    assert record["result"]["tokens_seen"] == 3 * 128 and record["result"]["global_step"] == 3


def test_a_time_budget_stops_after_the_step_that_reaches_it(models, text, tmp_path):
    record = distill(
        models["student"], models["teacher"], text, tmp_path / "time", quick(max_steps=50, max_minutes=1e-4)
    )
    assert record["result"]["global_step"] == 1 and record["result"]["stopped_by"].startswith("time budget")
    assert record["losses"]["validation"][-1]["step"] == 1  # the last step is validated and can be kept


def test_budget_time_counts_across_a_resumption():
    class State:
        log_history = [{"loss": 1.0, "train_seconds": 90.0, "step": 3}]
        num_input_tokens_seen = 0

    budget = BudgetCallback(max_minutes=1.0)
    budget.on_train_begin(None, State(), None)
    assert budget.elapsed() >= 90.0


# -- bad input ----------------------------------------------------------------------------------
def test_errors_come_in_the_order_the_user_typed(models, text, tmp_path, capsys):
    missing = str(tmp_path / "absent")
    assert main(["distill", missing, "--teacher", missing + "2", "--data", "wikitext2", "--output", "x"]) == 2
    assert f"model path not found: {missing}" in capsys.readouterr().err
    student = str(models["student"])
    assert main(["distill", student, "--teacher", missing, "--data", "wikitext2", "--output", "x"]) == 2
    assert f"model path not found: {missing}" in capsys.readouterr().err
    teacher = str(models["teacher"])
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["distill", student, "--teacher", teacher, "--data", "ptb", "--output", str(existing)]) == 2
    assert "ptb is an evaluation set" in capsys.readouterr().err
    assert main(["distill", student, "--teacher", teacher, "--data", str(tmp_path / "a.txt"), "--output", "x"]) == 2
    assert "training data file not found" in capsys.readouterr().err
    assert main(["distill", student, "--teacher", teacher, "--data", text, "--output", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_settings_that_the_run_would_not_read_are_refused():
    with pytest.raises(ConfigError, match="--lora-r only apply to LoRA"):
        DistillConfig(lora_r=8)
    with pytest.raises(ConfigError, match="hidden_weight needs the teacher's hidden states"):
        DistillConfig(teacher_topk=16, hidden_weight=1.0)
    with pytest.raises(ConfigError, match="freeze_embeddings has no effect with lora"):
        DistillConfig(lora=True, freeze_embeddings=True)
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0)
    assert DistillConfig.from_dict(DistillConfig(lora=True, lora_r=8).to_dict()) == DistillConfig(lora=True, lora_r=8)


def test_mismatched_teachers_and_empty_data_are_refused(models, text, tmp_path):
    tokenizer = byte_tokenizer()
    other_family = tmp_path / "qwen"
    tiny_qwen2(vocab_size=VOCAB).save_pretrained(other_family)
    tokenizer.save_pretrained(other_family)
    with pytest.raises(ConfigError, match="teacher is a qwen2 model and the student a llama one"):
        distill(models["student"], other_family, text, tmp_path / "o1", quick())

    wider = tmp_path / "wider"
    tiny_llama(vocab_size=VOCAB, hidden_size=72).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    with pytest.raises(ConfigError, match="equal hidden sizes"):
        distill(models["student"], wider, text, tmp_path / "o2", quick(hidden_weight=1.0))

    other_vocab = tmp_path / "other-vocab"
    tiny_llama(vocab_size=VOCAB).save_pretrained(other_vocab)
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as token_models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(token_models.WordLevel({w: i for i, w in enumerate(["<unk>", *WORDS])}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(other_vocab)
    with pytest.raises(ConfigError, match="tokenizers differ"):
        distill(models["student"], other_vocab, text, tmp_path / "o3", quick())

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="too little text"):
        distill(models["student"], models["teacher"], str(empty), tmp_path / "o4", quick())
    with pytest.raises(ModelSourceError, match="not a model folder"):
        distill(tmp_path, models["teacher"], text, tmp_path / "o5", quick())
    assert issubclass(DataFormatError, DataSourceError)


def test_two_processes_distil_as_one_ddp_group_and_one_writes(models, text, tmp_path):
    import subprocess
    import sys

    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "slimllm", "distill", str(models["student"]), "--teacher", str(models["teacher"])]
    command += ["--data", text, "--output", str(output), "--max-steps", "2", "--eval-steps", "2", "--cutoff", "32"]
    command += ["--batch-size", "4", "--micro-batch-size", "2", "--val-size", "8", "--teacher-topk", "16", "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    log = json.loads((output / DISTILL_LOG).read_text())
    assert log["training"]["world_size"] == 2 and log["training"]["gradient_accumulation_steps"] == 1
    assert log["result"]["global_step"] == 2 and log["result"]["tokens_seen"] == 2 * 4 * 32
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ddp"]


def test_plain_fine_tuning_trains_without_the_teacher_and_validates_with_it(models, text, tmp_path, monkeypatch):
    from slimllm.distill.teacher import LiveTeacher

    calls = {"train": 0, "eval": 0}
    original = LiveTeacher.targets

    def counted(self, *args, **kwargs):
        calls["train" if torch.is_grad_enabled() else "eval"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LiveTeacher, "targets", counted)
    config = quick(max_steps=3, kl_weight=0.0, ce_weight=1.0)
    record = distill(models["student"], models["teacher"], text, tmp_path / "ft", config, quiet=True)
    assert calls["train"] == 0 and calls["eval"] > 0  # the held-out KL is still measured against the teacher
    assert all("kl" not in entry and entry["ce"] > 0 for entry in record["losses"]["train"])
    assert all(entry["kl"] > 0 for entry in record["losses"]["validation"])
    with pytest.raises(ConfigError, match="nothing to train on"):
        DistillConfig(kl_weight=0.0)
