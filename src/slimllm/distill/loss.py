"""The distillation objective: what the student is trained to match of the teacher.

Notation, at one position: ``s``, ``t`` the student's and teacher's logits over the vocabulary V,
τ the temperature, p = softmax(t/τ) the teacher's distribution, q = softmax(s/τ) the student's.

- **Token KL** (the default loss): KL(p‖q) = Σ_v p_v (log p_v − log q_v), multiplied by τ² so that
  its gradients keep their size when τ changes (Hinton et al., 2015), averaged over the scored
  positions. Forward KL: the student is pushed to cover every token the teacher finds likely.
- **Top-k KL** (a teacher cached on disk): only the teacher's k most likely tokens S are kept.
  Both distributions are coarsened to k + 1 outcomes, the tokens of S and "any other token", and
  the KL of the coarsened distributions is taken:
  Σ_{v∈S} p_v (log p_v − log q_v) + p_rest (log p_rest − log q_rest), p_rest = Σ_{v∉S} p_v.
  It equals the token KL when S is the whole vocabulary, and is never larger (merging outcomes
  cannot increase a KL divergence); the tail keeps the student from piling mass outside S.
- **Next-token loss** (optional mix): the cross-entropy of the data's next token, at τ = 1.
- **Hidden-state matching** (optional): for each decoder layer ℓ, the squared distance of the
  student's and teacher's outputs divided by the teacher's mean squared norm at that layer,
  Σ‖h_s − h_t‖² / Σ‖h_t‖² over the scored positions, averaged over layers. The division keeps
  every layer's term of the same order although the residual stream grows with depth.
  slimllm never prunes the hidden size, so a pruned student and its dense teacher agree on it.

The trainer computes the token KL and the next-token loss together with
:func:`kl_and_nll`, a fused autograd function that works through the positions a chunk at a
time and writes the gradient analytically (∂/∂s of τ²·KL is τ·(q − p); of the next-token loss,
softmax(s) − onehot), so no vocabulary-sized intermediate is kept beyond the logits and their
gradient; :func:`token_kl` and :func:`next_token_nll` are the plain autograd forms it is tested
against.

Scored positions are those whose next token carries a label (``labels[t + 1] != -100``), the
positions the next-token loss scores: instruction data with a masked prompt distils the response
only, and padding is never scored. Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Logits of the tokens folded into "the rest" are replaced by this before a logsumexp: finite, so a
# rest that is empty (k = V) gives a log-probability whose exponential is exactly 0 and whose
# gradient is 0, where -inf would give NaN gradients.
EXCLUDED_LOGIT = -1e30


def next_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts, (batch, length): ``labels[t + 1]``, IGNORE_INDEX at the end."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask (batch, length): position t is scored when token t + 1 carries a label."""
    return next_tokens(labels) != IGNORE_INDEX


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """τ² · KL(p‖q) at every position, shape (batch, length)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return kl * temperature**2


class _KLAndNLL(torch.autograd.Function):
    """Rows of (N, V) logits: τ²·KL(softmax(t/τ) ‖ softmax(s/τ)), −log softmax(s)[target], and
    whether the two argmaxes agree; ``chunk`` rows at a time, gradient written analytically."""

    @staticmethod
    def forward(ctx, student, teacher, targets, temperature: float, chunk: int):
        rows = student.shape[0]
        kl = torch.empty(rows, dtype=torch.float32, device=student.device)
        nll = torch.zeros(rows, dtype=torch.float32, device=student.device)
        agree = torch.empty(rows, dtype=torch.bool, device=student.device)
        for start in range(0, rows, chunk):
            part = slice(start, start + chunk)
            s, t = student[part].float(), teacher[part].float()
            log_q = F.log_softmax(s / temperature, dim=-1)
            log_p = F.log_softmax(t / temperature, dim=-1)
            kl[part] = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
            log_q1 = log_q if temperature == 1 else F.log_softmax(s, dim=-1)
            target = targets[part]
            scored = target != IGNORE_INDEX
            picked = log_q1.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            nll[part] = torch.where(scored, -picked, torch.zeros_like(picked))
            agree[part] = s.argmax(-1) == t.argmax(-1)
        ctx.save_for_backward(student, teacher, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(agree)
        return kl, nll, agree

    @staticmethod
    def backward(ctx, grad_kl, grad_nll, _grad_agree):
        student, teacher, targets = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(student)
        for start in range(0, student.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            s, t = student[part].float(), teacher[part].float()
            q = F.softmax(s / temperature, dim=-1)
            g = (q - F.softmax(t / temperature, dim=-1)) * (grad_kl[part] * temperature).unsqueeze(-1)
            target = targets[part]
            scored = target != IGNORE_INDEX
            if scored.any() and grad_nll[part].any():
                q1 = q if temperature == 1 else F.softmax(s, dim=-1)
                weight = torch.where(scored, grad_nll[part], torch.zeros_like(grad_nll[part]))
                q1 = q1 * weight.unsqueeze(-1)
                q1.scatter_add_(-1, target.clamp_min(0).unsqueeze(-1), -weight.unsqueeze(-1))
                g += q1
            grad[part] = g.to(grad.dtype)
        return grad, None, None, None, None


def kl_and_nll(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 256,
):
    """τ²·KL and next-token NLL at every position (batch, length), and top-1 agreement (no gradient).

    ``targets`` are the next tokens (:func:`next_tokens`); NLL is 0 where a target is IGNORE_INDEX.
    """
    shape = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    kl, nll, agree = _KLAndNLL.apply(
        student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), targets.reshape(-1), temperature, chunk
    )
    return kl.view(shape), nll.view(shape), agree.view(shape)


def split_log_probs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0):
    """Log-probabilities of ``token_ids`` (batch, length, k) at τ, and of all other tokens together.

    Returns ``(log_probs, rest_log_prob)`` of shapes (batch, length, k) and (batch, length).
    """
    scaled = logits.float() / temperature
    total = torch.logsumexp(scaled, dim=-1)
    chosen = scaled.gather(-1, token_ids) - total.unsqueeze(-1)
    rest = torch.logsumexp(scaled.scatter(-1, token_ids, EXCLUDED_LOGIT), dim=-1) - total
    return chosen, rest


@dataclass
class TopK:
    """The teacher's k most likely tokens at each position, and the log-probabilities (at τ) of those
    tokens and of the rest of the vocabulary; what a disk cache keeps instead of full logits."""

    token_ids: torch.Tensor  # (batch, length, k), int64, most likely first
    log_probs: torch.Tensor  # (batch, length, k)
    rest_log_prob: torch.Tensor  # (batch, length)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopK:
        token_ids = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        log_probs, rest = split_log_probs(logits, token_ids, temperature)
        return cls(token_ids, log_probs, rest)


def topk_kl(student_logits: torch.Tensor, teacher: TopK, temperature: float = 1.0) -> torch.Tensor:
    """τ² · KL of the coarsened distributions (the teacher's top k tokens and the rest), (batch, length)."""
    student, student_rest = split_log_probs(student_logits, teacher.token_ids, temperature)
    kept = (teacher.log_probs.exp() * (teacher.log_probs - student)).sum(-1)
    rest = teacher.rest_log_prob.exp() * (teacher.rest_log_prob - student_rest)
    return (kept + rest) * temperature**2


def next_token_nll(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The data's next-token negative log-likelihood at every position, (batch, length); 0 where unscored."""
    nll = torch.zeros(labels.shape, dtype=torch.float32, device=student_logits.device)
    targets = labels[:, 1:]
    losses = F.cross_entropy(
        student_logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    nll[:, :-1] = losses
    return nll


def hidden_state_distance(
    student_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_states: tuple[torch.Tensor, ...] | list[torch.Tensor],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean over layers of Σ‖h_s − h_t‖² / Σ‖h_t‖² over the scored positions (a scalar).

    ``*_states`` are the decoder layers' outputs, one (batch, length, hidden) tensor per layer (the
    models' ``hidden_states`` without the embeddings, entry 0).
    """
    if len(student_states) != len(teacher_states):
        raise ValueError(
            f"hidden-state matching needs as many layers in the student ({len(student_states)}) "
            f"as in the teacher ({len(teacher_states)})"
        )
    terms = []
    for student, teacher in zip(student_states, teacher_states, strict=True):
        student, teacher = student[mask].float(), teacher[mask].float()
        terms.append((student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()
