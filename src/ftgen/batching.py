"""The order and shape of training batches: which examples go to which optimizer step, micro-batch and
process (`epoch_plan`), and how a micro-batch becomes tensors (`collate`).

The data order is a pure function of (seed, epoch), so a resumed run replays it exactly. Length grouping:
optimizer steps are cut from length-sorted chunks of a seeded shuffle (as HF's group_by_length), and each
step is split into micro-batches under two caps (micro_batch_size examples, micro_batch_tokens padded
tokens): short examples go many to a forward pass, long ones few, and each micro-batch is padded only to its
own longest example (right padding). Fewer, larger forward passes matter on CPUs, where every op carries a
fixed cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

IGNORE = -100  # the target of a position that is not trained (prompt, padding)
GROUP_CHUNK = 64  # length grouping sorts chunks of GROUP_CHUNK batches (as HF's group_by_length megabatches)


@dataclass(frozen=True)
class Example:
    """One training sequence: prompt (context + query) then answer (+ EOS); the loss covers the answer."""

    ids: list[int]
    n_prompt: int

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


def collate(examples: list[Example], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; `targets[t]` is the token position t must predict, or IGNORE.

    Position t predicts token t+1, so the answer tokens ids[n_prompt:] are the targets of positions
    n_prompt-1 .. len-2: the last prompt token predicts the first answer token, and the EOS that
    ends the answer is a target too (the mask comes from lengths, not from `id == pad`, so pad == eos
    does not hide it).
    """
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        input_ids[row, :n] = torch.tensor(e.ids)
        attention_mask[row, :n] = 1
        targets[row, e.n_prompt - 1 : n - 1] = torch.tensor(e.ids[e.n_prompt :])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "targets": targets.to(device),
    }


def split_micro(indices: list[int], lengths: list[int], micro: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive micro-batches of at most `micro` examples and `max_tokens` tokens once padded (with a
    token cap, a micro-batch with a long tail is cut in two: see _split_padding)."""
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        width = max(longest, lengths[i])
        if current and (len(current) == micro or (max_tokens and (len(current) + 1) * width > max_tokens)):
            out.append(current)
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    out = out + [current] if current else out
    if not max_tokens:  # fixed micro-batches (DeepSpeed fixes its accumulation steps up front)
        return out
    return [part for batch in out for part in _split_padding(batch, lengths)]


def _split_padding(batch: list[int], lengths: list[int], keep: float = 0.9) -> list[list[int]]:
    """Cut a micro-batch in two where that drops over 1 - `keep` of its padded tokens (a long tail).
    On CPUs a forward pass costs about its padded tokens, so fewer tokens beat fewer passes."""
    if len(batch) < 2:
        return [batch]
    by_len = sorted(batch, key=lengths.__getitem__)
    padded = len(by_len) * lengths[by_len[-1]]
    best, cut = min(
        (k * lengths[by_len[k - 1]] + (len(by_len) - k) * lengths[by_len[-1]], k) for k in range(1, len(by_len))
    )
    if best >= keep * padded:
        return [batch]
    return _split_padding(by_len[:cut], lengths, keep) + _split_padding(by_len[cut:], lengths, keep)


def epoch_plan(
    lengths: list[int],
    batch_size: int,
    micro: int,
    max_tokens: int | None,
    seed: int,
    epoch: int,
    world: int = 1,
    group_by_length: bool = True,
    min_micro_batches: int = 1,
) -> list[list[list[list[int] | None]]]:
    """The optimizer steps of one epoch: plan[step][process] = that process's micro-batches.

    A pure function of (seed, epoch): resume replays it exactly. A seeded shuffle is cut into chunks
    of GROUP_CHUNK batches, each chunk sorted by length (as HF's group_by_length), cut into batches of
    `batch_size` examples (one optimizer step each), and the steps are shuffled. Each process takes
    every world-th example of a step and cuts its share into micro-batches under both caps, so short
    examples go many to a forward pass and long ones few. Processes with fewer micro-batches than the
    others (or than `min_micro_batches`) get `None`: a no-op pass that keeps gradient sync in step.
    """
    rng = random.Random(f"ftgen-train:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK
        order = [i for c in range(0, len(order), chunk) for i in sorted(order[c : c + chunk], key=lengths.__getitem__)]
    steps = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(steps)  # long and short steps interleave
    plan = []
    for step in steps:
        shares = [split_micro(step[r::world], lengths, micro, max_tokens) for r in range(world)]
        width = max(min_micro_batches, *(len(s) for s in shares))
        plan.append([s + [None] * (width - len(s)) for s in shares])
    return plan
