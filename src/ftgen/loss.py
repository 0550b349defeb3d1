"""The training loss: summed cross-entropy over the response tokens, with the LM head applied only where a
label is kept (the decoder gives hidden states; the head - a 576 x 49152 matmul for the default model, plus
the full-vocabulary float upcast and log-softmax - runs on the response positions only). Checked against the
model's own loss before training, so an architecture that post-processes its logits is caught.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ftgen.batching import IGNORE, Example, collate
from ftgen.errors import UserError


class ResponseLoss(nn.Module):
    """Summed cross-entropy over the response tokens; the LM head runs only on those positions."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)  # FSDP auto-wrap reads it
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def forward(self, input_ids, attention_mask, targets) -> torch.Tensor:
        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        keep = targets != IGNORE
        logits = self.model.get_output_embeddings()(hidden[keep]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits, targets[keep], reduction="sum")


@torch.no_grad()
def check_response_loss(model: nn.Module, examples: list[Example], pad_id: int) -> None:
    """ResponseLoss must equal the model's own loss: catches architectures that post-process their logits.

    One fp32 forward of the two shortest examples, in eval mode (no dropout, no RNG drawn).
    """
    batch = collate(sorted(examples, key=lambda e: len(e.ids))[:2], pad_id, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    ours = ResponseLoss(model)(**batch).item()
    labels = torch.where(batch["attention_mask"].bool(), batch["input_ids"], IGNORE)
    labels[:, 1:] = batch["targets"][:, :-1]  # HF shifts labels itself: label t = target of position t-1
    labels[:, 0] = IGNORE
    n = int((batch["targets"] != IGNORE).sum())
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.item() * n
    model.train(was_training)
    if not math.isclose(ours, theirs, rel_tol=1e-3, abs_tol=1e-3):
        raise UserError(
            f"model '{type(model).__name__}': the response-only loss ({ours:.4f}) differs from the model's own "
            f"loss ({theirs:.4f}) on the same tokens; its logits are post-processed in a way ftgen does not know"
        )


@torch.no_grad()
def mean_loss(lossf: nn.Module, examples: list[Example], pad_id: int, device, autocast, batch_size: int = 8) -> float:
    """Mean cross-entropy per response token of a ResponseLoss module over `examples` (no training).

    Batches by length in a fixed order, so the number is reproducible bit for bit.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    total, count = 0.0, 0
    was_training = lossf.training
    lossf.eval()
    for s in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[s : s + batch_size]]
        with autocast():
            total += lossf(**collate(batch, pad_id, device)).item()
        count += sum(e.n_answer for e in batch)
    lossf.train(was_training)
    return total / max(count, 1)


def response_loss(model, examples: list[Example], pad_id: int, *, dtype: str = "auto", batch_size: int = 8) -> float:
    """Mean cross-entropy per response token of an HF / PEFT model on `examples`, as `train` measures it."""
    from ftgen.models import choose_dtype

    device = next(model.parameters()).device
    compute = choose_dtype(dtype, device.type)

    def autocast():
        return torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)

    return mean_loss(ResponseLoss(model), examples, pad_id, device, autocast, batch_size)
