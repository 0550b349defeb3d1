"""The vLLM backend of the evaluation engine (GPU only, optional: `pip install 'ftgen[gpu]'`).

Status: NOT RUN ON A GPU BY THIS PROJECT. What is tested (tests/test_vllm_contract.py) is ftgen's side of
the contract, against a stand-in module that follows vLLM's documented interface (`LLM.generate`,
`SamplingParams(prompt_logprobs=...)`, `TokensPrompt`, `RequestOutput.prompt_logprobs`) and computes with a
real Hugging Face model: the indexing of prompt log-probs and the stop rule give the same label choices
and first paragraphs as the hf backend. That vLLM itself behaves as documented is not tested here.

Classification: every (record, label) is one prompt `context + query + label` with `max_tokens=1` and
`prompt_logprobs=1`; vLLM returns, for prompt position i, a dict token id -> Logprob that always holds the
prompt's own token (and position 0 is None), so label token t is read at position len(context + query) + t.
vLLM's automatic prefix caching shares the context's KV blocks across requests.

Generation: greedy (`temperature=0`) to `max_new_tokens`; vLLM's stop strings would also stop on a leading
blank line, so the engine cuts the output by its own rule (`evaluate.cut_at_stop`).
"""

from __future__ import annotations

from typing import Protocol

from ftgen.errors import UserError


class Item(Protocol):
    """What this backend reads of ftgen.evaluate.Item (named here so the engine's module is not imported back)."""

    query: list[int]  # token ids after the shared context
    labels: list[list[int]]  # classification: ids of separator + label word per label


STATUS = "not run on a GPU by this project (contract-tested against a stand-in only)"


def vllm_module():
    """The vllm package, or one UserError line saying how to get it."""
    try:
        import vllm
    except ImportError:
        raise UserError("--backend vllm needs vLLM on a GPU machine: pip install 'ftgen[gpu]'") from None
    return vllm


def load_vllm(name_or_path: str, dtype: str = "auto"):
    """(vllm.LLM, tokenizer) with prefix caching on; an adapter must be merged into a checkpoint first."""
    from ftgen.models import is_adapter_dir, resolve_model

    vllm = vllm_module()
    path = resolve_model(name_or_path)
    if is_adapter_dir(path):
        raise UserError(f"{path}: the vllm backend takes a full checkpoint, not an adapter dir (merge it first)")
    names = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    llm = vllm.LLM(model=path, dtype=names.get(dtype, dtype), enable_prefix_caching=True)
    return llm, llm.get_tokenizer()


def vllm_max_length(llm) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def classify(llm, items: list[Item], context_ids: list[int]) -> list[list[list[float]]]:
    """Per item, per label, the log-prob of each label token (read from the prompt log-probs)."""
    vllm = vllm_module()
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=context_ids + it.query + lab) for it in items for lab in it.labels]
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
    outs = iter(llm.generate(prompts, params, use_tqdm=False))
    result = []
    for it in items:
        per_label = []
        for lab in it.labels:
            plp = next(outs).prompt_logprobs
            n = len(context_ids) + len(it.query)
            per_label.append([plp[n + t][tok].logprob for t, tok in enumerate(lab)])
        result.append(per_label)
    return result


def generate(llm, task, items: list[Item], context_ids: list[int]) -> list[str]:
    """Greedy continuations to max_new_tokens (or EOS); the engine cuts them by its stop rule."""
    vllm = vllm_module()
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=context_ids + it.query) for it in items]
    params = vllm.SamplingParams(max_tokens=task.max_new_tokens, temperature=0.0)
    return [out.outputs[0].text for out in llm.generate(prompts, params, use_tqdm=False)]
