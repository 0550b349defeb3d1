"""Prompt building: one function serves training (FTICL) and evaluation, so the two never drift.

A prompt is   context + query + answer   where
    context = k in-context examples, each `template(example) + sep + example.output + shot_separator`
    query   = template(record)
    answer  = sep + record.output   (what training learns and classification scores)
as in the paper's code. `sep` is the task's `answer_separator` (" " for the built-in tasks), left out
when the template already ends in whitespace.

Tokenization rule: the three parts are tokenized separately and concatenated (`encode_prompt`), the
shared part first with the tokenizer's special prefix (BOS, where the tokenizer adds one). Training,
evaluation and the KV cache of the shared context therefore see the very same token ids.

Truncation rule (documented in the README): when context + query + answer (+ the tokens reserved for
generation) exceeds the model's maximum length, the query record's `truncate_field` (default: its
longest field) is cut from the end, token-wise, until it fits. The in-context examples, the template
text and the answer / label cue are never cut. If the record cannot fit even with that field emptied,
that is a UserError: use fewer shots or a longer maximum length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ftgen.errors import UserError
from ftgen.tasks import TaskDef


@dataclass(frozen=True)
class Prompt:
    context: str
    query: str
    answer: str
    truncated: bool = False

    @property
    def text(self) -> str:
        """The prompt the model sees, without the answer."""
        return self.context + self.query


def fill_template(task: TaskDef, record: dict, fmt: int = 0) -> str:
    if not 0 <= fmt < len(task.templates):
        raise UserError(
            f"prompt format {fmt} does not exist for task '{task.name}' "
            f"(it has {len(task.templates)}: 0..{len(task.templates) - 1})"
        )
    return task.templates[fmt].format_map({f: record[f] for f in task.fields})


def separator_after(task: TaskDef, prompt: str) -> str:
    return "" if prompt[-1:].isspace() else task.answer_separator


def render_context(task: TaskDef, shots: list[dict], fmt: int = 0) -> str:
    """The in-context examples, each followed by its answer and the shot separator."""
    parts = []
    for shot in shots:
        query = fill_template(task, shot, fmt)
        parts.append(query + separator_after(task, query) + shot["output"] + task.shot_separator)
    return "".join(parts)


def select_shots(pool: list[dict], k: int, seed: int | None = None) -> list[dict]:
    """The first k examples of the pool (the paper's choice), or k sampled with `seed`."""
    if k < 0:
        raise UserError(f"shots must be >= 0, got {k}")
    if k > len(pool):
        raise UserError(f"{k} shots asked for, but the few-shot pool has only {len(pool)} examples")
    if seed is None:
        return list(pool[:k])
    return random.Random(seed).sample(list(pool), k)


def build_prompt(
    task: TaskDef, record: dict, fmt: int = 0, shots: list[dict] | None = None, context: str | None = None
) -> Prompt:
    """The prompt for `record`. Pass `shots`, or an already rendered `context` to share it."""
    if context is None:
        context = render_context(task, shots or [], fmt)
    query = fill_template(task, record, fmt)
    return Prompt(context, query, separator_after(task, query) + record["output"])


@dataclass(frozen=True)
class EncodedPrompt:
    context: list[int]  # special prefix (BOS) + in-context examples: shared by a whole test set
    query: list[int]
    answer: list[int]

    @property
    def prompt_ids(self) -> list[int]:
        return self.context + self.query

    def __len__(self) -> int:
        return len(self.context) + len(self.query) + len(self.answer)


def special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before any text (e.g. Llama's BOS); empty for most BPE tokenizers."""
    cached = getattr(tokenizer, "_ftgen_special_prefix", None)
    if cached is None:
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        n = len(with_special) - len(without)
        cached = list(with_special[:n]) if n > 0 and with_special[n:][: len(without)] == without else []
        tokenizer._ftgen_special_prefix = cached
    return cached


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_prompt(tokenizer, prompt: Prompt, answer_suffix: str = "") -> EncodedPrompt:
    """Token ids of context / query / answer (+ `answer_suffix`, e.g. the EOS text), per the rule above."""
    answer = encode_text(tokenizer, prompt.answer)
    if answer_suffix:
        answer += encode_text(tokenizer, answer_suffix)
    return EncodedPrompt(
        special_prefix(tokenizer) + encode_text(tokenizer, prompt.context), encode_text(tokenizer, prompt.query), answer
    )


def fit_prompt(
    task: TaskDef,
    record: dict,
    fmt: int,
    context: str,
    tokenizer,
    max_tokens: int,
    reserve: int = 0,
    answer_suffix: str = "",
) -> Prompt:
    """build_prompt, then cut the record's truncate field until the whole fits in `max_tokens`.

    `reserve` counts tokens that must stay free after the prompt (generation); `answer_suffix`
    is text appended after the answer during training (the EOS token).
    """
    prompt = build_prompt(task, record, fmt, context=context)

    def n_tokens(p: Prompt) -> int:
        return len(encode_prompt(tokenizer, p, answer_suffix)) + reserve

    excess = n_tokens(prompt) - max_tokens
    if excess <= 0:
        return prompt
    name = task.truncate_field or max(task.fields, key=lambda f: len(record[f]))
    ids = tokenizer(record[name], add_special_tokens=False)["input_ids"]
    record = dict(record)
    # Re-tokenising the joined text can merge or split tokens at the cut: shrink until it fits.
    keep = len(ids) - excess
    while keep > 0:
        record[name] = tokenizer.decode(ids[:keep])
        cut = build_prompt(task, record, fmt, context=context)
        over = n_tokens(cut) - max_tokens
        if over <= 0:
            return Prompt(cut.context, cut.query, cut.answer, truncated=True)
        keep -= max(over, 1)
    raise UserError(
        f"record {record.get('id')}: the prompt does not fit in {max_tokens} tokens even with "
        f"field '{name}' emptied (use fewer shots or a longer max length)"
    )
