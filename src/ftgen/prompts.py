"""Prompt building: one function serves training (FTICL) and evaluation, so the two never drift.

A prompt is   context + query + answer   where
    context = k in-context examples, each `template(example) + lead + example.output + shot_separator`
    query   = template(record), its trailing whitespace removed
    answer  = lead + record.output   (what training learns and classification scores)
as in the paper's code. `lead` is the task's `answer_separator` (" " for the built-in tasks); a prompt that ends
in whitespace ("The relation is ") has it moved into the answer instead (lm-evaluation-harness's rule:
context.rstrip(), continuation = the stripped whitespace + continuation). A model never sees a prompt ending in
a bare space token, and the answer is scored as the tokens the model would produce: " entailment", not
"entailment" after " ".

Tokenization rule: the three parts are tokenized separately and concatenated (`encode_prompt`), the
shared part first with the tokenizer's special prefix (BOS, where the tokenizer adds one). Training,
evaluation and the KV cache of the shared context therefore see the very same token ids. The answer is
tokenized as it tokenizes after other text (`encode_continuation`): a SentencePiece tokenizer that prepends
"▁" to a text on its own would otherwise give " yes" a spurious leading "▁" token (Llama's 29871), which
no model produces after a word.

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
    query: str  # never ends in whitespace: that goes to the answer
    answer: str  # lead + the gold answer ("" for evaluation: the lead alone)
    truncated: bool = False
    lead: str = ""  # the text between query and answer (a space, or the template's trailing whitespace)

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


def split_lead(task: TaskDef, query: str) -> tuple[str, str]:
    """(the query without its trailing whitespace, the lead that starts the answer): the whitespace the query
    ended in, else the task's answer separator."""
    stripped = query.rstrip()
    return stripped, query[len(stripped) :] or task.answer_separator


def template_lead(task: TaskDef, fmt: int) -> str:
    """The lead of format `fmt`'s prompts, read off the template (a template that ends in a field also depends
    on the record's last characters: the engine checks those per record)."""
    return split_lead(task, fill_template(task, dict.fromkeys(task.fields, "x"), fmt))[1]


def render_context(task: TaskDef, shots: list[dict], fmt: int = 0) -> str:
    """The in-context examples, each followed by its answer and the shot separator."""
    parts = []
    for shot in shots:
        query, lead = split_lead(task, fill_template(task, shot, fmt))
        parts.append(query + lead + shot["output"] + task.shot_separator)
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
    query, lead = split_lead(task, fill_template(task, record, fmt))
    return Prompt(context, query, lead + record["output"], lead=lead)


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


ANCHOR = "a"  # text that an answer is tokenized after; a word, so a leading space stays with the answer's word


def encode_continuation(tokenizer, text: str) -> list[int]:
    """Ids of `text` as it tokenizes after a word: tokenize ANCHOR + text and drop the anchor's ids (as
    lm-evaluation-harness splits context + continuation). Plain `encode_text` where the two merge."""
    if not text:
        return []
    anchor = encode_text(tokenizer, ANCHOR)
    whole = encode_text(tokenizer, ANCHOR + text)
    if len(whole) > len(anchor) and whole[: len(anchor)] == anchor:
        return whole[len(anchor) :]
    return encode_text(tokenizer, text)


def encode_labels(tokenizer, task: TaskDef, lead: str) -> list[list[int]]:
    """Ids of lead + each label word, in task.labels order: the continuations classification scores."""
    return [encode_continuation(tokenizer, lead + label) for label in task.labels]


def first_token_clash(tokenizer, task: TaskDef, lead: str) -> tuple[str, str, str] | None:
    """(label, label, token) of two label words whose continuations start with the same token, or None.

    First-token scoring cannot tell such labels apart: every record would get the first of them."""
    seen: dict[int, str] = {}
    for label, ids in zip(task.labels, encode_labels(tokenizer, task, lead), strict=True):
        if not ids:
            continue
        if ids[0] in seen:
            return seen[ids[0]], label, f"{ids[0]} {tokenizer.convert_ids_to_tokens(ids[0])!r}"
        seen[ids[0]] = label
    return None


def check_first_token_scoring(tokenizer, task: TaskDef, fmts: list[int], model: str) -> None:
    """UserError if first-token scoring cannot separate the labels of `task` under `tokenizer`, in any format."""
    for fmt in fmts:
        if clash := first_token_clash(tokenizer, task, template_lead(task, fmt)):
            a, b, token = clash
            raise UserError(
                f"task '{task.name}' prompt format {fmt}: labels '{a}' and '{b}' start with the same token "
                f"({token}) under the tokenizer of '{model}', so first-token scoring cannot tell them apart "
                "(use scoring sum or mean)"
            )


def encode_prompt(tokenizer, prompt: Prompt, answer_suffix: str = "") -> EncodedPrompt:
    """Token ids of context / query / answer (+ `answer_suffix`, e.g. the EOS text), per the rule above."""
    answer = encode_continuation(tokenizer, prompt.answer)
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
            return Prompt(cut.context, cut.query, cut.answer, truncated=True, lead=cut.lead)
        keep -= max(over, 1)
    raise UserError(
        f"record {record.get('id')}: the prompt does not fit in {max_tokens} tokens even with "
        f"field '{name}' emptied (use fewer shots or a longer max length)"
    )
