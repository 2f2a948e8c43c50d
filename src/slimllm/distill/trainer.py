"""The transformers Trainer with the distillation loss, held-out KL and top-1 agreement, budgets,
and per-step tokens, time and memory in the log.

Only ``compute_loss``, ``log`` and ``evaluation_loop`` are extended: optimisation, checkpoints,
resumption, DDP/FSDP under ``torchrun``/``accelerate launch`` and best-checkpoint selection are
the Trainer's own, as for ``slimllm finetune``.
"""

from __future__ import annotations

import math
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from slimllm.distill.config import DistillConfig
from slimllm.distill.loss import (
    IGNORE_INDEX,
    TopK,
    hidden_state_distance,
    kl_and_nll,
    next_token_nll,
    next_tokens,
    topk_kl,
)

EXAMPLE_ID = "example_id"  # the column that finds an example's cached teacher targets
# Sums kept per log interval and per evaluation: positions scored, and the sums of these terms over them.
TERMS = ("kl", "ce", "top1")
BEST_METRIC = "eval_kl"


def peak_memory_gb() -> dict[str, float]:
    """This process's peak resident memory, and the accelerator's peak allocation where there is one."""
    scale = 1024**2 if sys.platform != "darwin" else 1024**3  # ru_maxrss: KiB on Linux, bytes on macOS
    memory = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 3)}
    if torch.cuda.is_available():
        memory["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    return memory


class DistillationLoss:
    """The objective of :class:`~slimllm.distill.config.DistillConfig` on one batch.

    Returns the loss and the batch's sums (scored positions, KL, next-token NLL, top-1 agreements).
    """

    def __init__(self, config: DistillConfig):
        self.temperature = config.temperature
        self.kl_weight = config.kl_weight
        self.ce_weight = config.ce_weight
        self.hidden_weight = config.hidden_weight
        # Plain fine-tuning (only the next-token loss) trains without the teacher; validation still uses it.
        self.trains_on_teacher = bool(config.kl_weight or config.hidden_weight)

    def __call__(self, student_logits, teacher_targets, labels, student_hidden=None, teacher_hidden=None):
        """``teacher_targets``: the teacher's logits, its :class:`TopK` targets, or None when the loss
        does not use the teacher (the sums then hold no KL)."""
        targets = next_tokens(labels)
        mask = targets != IGNORE_INDEX
        count = mask.sum()
        scale = 1 / count.clamp_min(1)
        if teacher_targets is None:
            nll = F.cross_entropy(
                student_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return self.ce_weight * nll * scale, torch.stack([count.double(), nan, nll.detach().double(), nan])
        if isinstance(teacher_targets, TopK):
            kl = topk_kl(student_logits, teacher_targets, self.temperature)
            nll = next_token_nll(student_logits, labels)
            with torch.no_grad():
                agree = student_logits.argmax(-1) == teacher_targets.token_ids[..., 0]
        else:
            kl, nll, agree = kl_and_nll(student_logits, teacher_targets, targets, self.temperature)
        loss = self.kl_weight * kl[mask].sum() * scale
        if self.ce_weight:
            loss = loss + self.ce_weight * nll[mask].sum() * scale
        if self.hidden_weight:
            loss = loss + self.hidden_weight * hidden_state_distance(student_hidden, teacher_hidden, mask)
        with torch.no_grad():
            sums = torch.stack([count.float(), kl[mask].sum(), nll[mask].sum(), agree[mask].sum().float()]).double()
        return loss, sums


class DistillationTrainer(Trainer):
    """A Trainer whose loss is the distillation objective against ``teacher`` (a live or cached one)."""

    def __init__(self, *args, teacher, distill_config: DistillConfig, budget: BudgetCallback | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device)
        self.objective = DistillationLoss(distill_config)
        self.wants_hidden = distill_config.hidden_weight > 0
        self.budget = budget
        if budget is not None and self.accelerator.num_processes > 1:
            budget.agree = self._any_process
        # The loss is a mean over each micro-batch's positions; the Trainer divides it by the
        # accumulation steps (text blocks have equal lengths, so this is the mean over the batch).
        self.model_accepts_loss_kwargs = False
        self._train_sums = torch.zeros(4, dtype=torch.float64)
        self._eval_sums: torch.Tensor | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        example_ids = inputs.pop(EXAMPLE_ID, None)
        labels = inputs["labels"]
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            output_hidden_states=self.wants_hidden,
            use_cache=False,
        )
        teacher_targets = teacher_hidden = None
        if self.objective.trains_on_teacher or not model.training:
            teacher_targets, teacher_hidden = self.teacher.targets(
                inputs["input_ids"], inputs.get("attention_mask"), example_ids, hidden_states=self.wants_hidden
            )
        student_hidden = outputs.hidden_states[1:] if self.wants_hidden else None
        loss, sums = self.objective(outputs.logits, teacher_targets, labels, student_hidden, teacher_hidden)
        if model.training:
            self._train_sums += sums.cpu()
        elif self._eval_sums is not None:
            self._eval_sums += sums.cpu()
        return (loss, outputs) if return_outputs else loss

    def _any_process(self, flag: bool) -> bool:
        """True on every process when it is True on one (a wall-time budget must stop all together)."""
        value = torch.tensor([float(flag)], device=self.args.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _summed_over_processes(self, sums: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return sums
        return self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: the interval's averages, tokens, time and memory
            sums = self._summed_over_processes(self._train_sums.clone())
            self._train_sums.zero_()
            logs.update(_averages(sums, prefix=""))
            if self.budget is not None:
                logs["train_seconds"] = round(self.budget.elapsed(), 2)
            logs.update(peak_memory_gb())
        super().log(logs, start_time)

    def evaluation_loop(self, *args, **kwargs):
        self._eval_sums = torch.zeros(4, dtype=torch.float64)
        try:
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            output.metrics.update(_averages(self._summed_over_processes(self._eval_sums), prefix=f"{prefix}_"))
        finally:
            self._eval_sums = None
        return output


def _averages(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    count = sums[0].item()
    if count == 0:
        return {}
    kl, nll, agree = (value.item() / count for value in sums[1:])
    averages = {f"{prefix}ce": nll, f"{prefix}ppl": math.exp(min(nll, 50.0))}
    if not math.isnan(kl):  # trained without the teacher: no KL on the training batches
        averages.update({f"{prefix}kl": kl, f"{prefix}top1": agree})
    return averages


class BudgetCallback(TrainerCallback):
    """Stops training at a token or wall-time budget, evaluating and checkpointing the last step.

    Training time counts across a resumption: the time already spent is read back from the last
    training log (``train_seconds``) of the resumed state.
    """

    def __init__(self, max_tokens: int | None = None, max_minutes: float | None = None):
        self.max_tokens = max_tokens
        self.max_seconds = max_minutes * 60 if max_minutes is not None else None
        self.before = 0.0
        self.started = time.monotonic()
        self.reason: str | None = None
        self.agree = bool  # across processes: the trainer sets it when there are several

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def on_train_begin(self, args, state, control, **kwargs):
        logged = [entry["train_seconds"] for entry in state.log_history if "train_seconds" in entry]
        self.before = logged[-1] if logged else 0.0
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_tokens is not None and state.num_input_tokens_seen >= self.max_tokens:
            self.reason = f"token budget ({self.max_tokens:,} tokens)"
        elif self.max_seconds is not None and self.agree(self.elapsed() >= self.max_seconds):
            self.reason = f"time budget ({self.max_seconds / 60:g} min)"
        if self.reason is not None and not control.should_training_stop:
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = True
            control.should_log = True
