"""The vLLM backend's contract, checked against a stand-in `vllm` module (vLLM itself is never run here).

The stand-in follows vLLM's documented offline interface: `LLM(model=..., dtype=..., enable_prefix_caching=...)`,
`LLM.get_tokenizer()`, `LLM.llm_engine.model_config.max_model_len`, `LLM.generate(prompts, sampling_params,
use_tqdm=...)` returning one `RequestOutput` per prompt, in order; `SamplingParams(max_tokens, temperature,
prompt_logprobs)`; `vllm.inputs.TokensPrompt(prompt_token_ids=...)`; `RequestOutput.prompt_logprobs` a list
with one entry per prompt token, None for the first, else a dict token id -> `Logprob(logprob, rank,
decoded_token)` holding the prompt's own token and the top `prompt_logprobs` tokens; greedy decoding at
temperature 0 that stops at EOS (not included in the text) or `max_tokens`; `CompletionOutput.text` decoded
without special tokens. It computes all of that with a real Hugging Face model, so ftgen's vllm path (its
indexing of prompt_logprobs, its stop rule) must give the hf path's label choices and first paragraphs.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from ftgen.evaluate import evaluate
from ftgen.models import resolve_model

# ---------------------------------------------------------------- the stand-in


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list | None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class SamplingParams:
    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int | None = 16,
        prompt_logprobs: int | None = None,
        logprobs: int | None = None,
        stop=None,
        ignore_eos: bool = False,
    ):
        assert temperature == 0.0, "ftgen decodes greedily"
        self.max_tokens, self.prompt_logprobs = max_tokens, prompt_logprobs
        self.stop, self.ignore_eos = stop, ignore_eos


def TokensPrompt(prompt_token_ids: list[int]) -> dict:  # a TypedDict in vLLM  # noqa: N802
    return {"prompt_token_ids": list(prompt_token_ids)}


class LLM:
    calls: list[dict] = []

    def __init__(self, model: str, dtype: str = "auto", enable_prefix_caching: bool = False, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        max_len = self.model.config.max_position_embeddings
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=max_len))
        LLM.calls.append({"model": model, "dtype": dtype, "enable_prefix_caching": enable_prefix_caching})

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        return [self._one(str(i), p["prompt_token_ids"], sampling_params) for i, p in enumerate(prompts)]

    @torch.inference_mode()
    def _one(self, request_id: str, ids: list[int], params: SamplingParams) -> RequestOutput:
        logits = self.model(torch.tensor([ids])).logits[0].float()
        logprobs = torch.log_softmax(logits, -1)
        plp = None
        if params.prompt_logprobs is not None:
            plp = [None]
            for i in range(1, len(ids)):
                row = logprobs[i - 1]
                ranks = (row > row[ids[i]]).sum().item() + 1
                entry = {ids[i]: Logprob(row[ids[i]].item(), ranks, self.tokenizer.decode([ids[i]]))}
                for r, tok in enumerate(row.topk(params.prompt_logprobs).indices.tolist(), 1):
                    entry.setdefault(tok, Logprob(row[tok].item(), r, self.tokenizer.decode([tok])))
                plp.append(entry)
        eos = self.tokenizer.eos_token_id
        if params.max_tokens == 1:
            out = [int(logits[-1].argmax())]
        else:  # greedy with a KV cache, to max_tokens or EOS
            ids_t = torch.tensor([ids])
            gen = self.model.generate(
                ids_t, attention_mask=torch.ones_like(ids_t), max_new_tokens=params.max_tokens, do_sample=False,
                eos_token_id=None if params.ignore_eos else eos, pad_token_id=eos,
            )  # fmt: skip
            out = gen[0, len(ids) :].tolist()
        out = out[: out.index(eos)] if eos in out and not params.ignore_eos else out
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return RequestOutput(request_id, list(ids), plp, [CompletionOutput(0, text, out)])


@pytest.fixture
def stand_in_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = TokensPrompt
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    LLM.calls.clear()
    return vllm


# ---------------------------------------------------------------- the contract


def _data(paper_data, task_name, test_set, n, k):
    from ftgen.data import load_pool, load_test_set
    from ftgen.prompts import select_shots
    from ftgen.tasks import load_task

    task = load_task(task_name)
    records = load_test_set(paper_data, task, test_set, limit=n).records
    return task, records, select_shots(load_pool(paper_data, task, test_set).records, k)


def test_vllm_path_gives_the_hf_paths_label_choices(stand_in_vllm, default_model_fp32, paper_data):
    from ftgen.vllm_backend import load_vllm

    model, tok = default_model_fp32
    llm, vtok = load_vllm("default", "fp32")
    assert LLM.calls == [{"model": resolve_model("default"), "dtype": "float32", "enable_prefix_caching": True}]
    # inference: "entailment" is two tokens, so the second label token's index is checked too
    task, records, shots = _data(paper_data, "inference", "gptnli", 5, 1)
    ours = evaluate(model, tok, task, records, shots=shots)
    theirs = evaluate(llm, vtok, task, records, shots=shots, backend="vllm")
    assert theirs.metrics["backend"] == "vllm" and theirs.metrics["max_length"] == ours.metrics["max_length"]
    assert [p["prediction"] for p in theirs.predictions] == [p["prediction"] for p in ours.predictions]
    for a, b in zip(theirs.predictions, ours.predictions, strict=True):
        for label in task.labels:
            assert a["logprobs"][label] == pytest.approx(b["logprobs"][label], abs=1e-3)
    assert theirs.metrics["accuracy"] == ours.metrics["accuracy"]


def test_vllm_path_gives_the_hf_paths_first_paragraphs(stand_in_vllm, default_model_fp32, paper_data):
    from ftgen.vllm_backend import load_vllm

    model, tok = default_model_fp32
    llm, vtok = load_vllm("default", "fp32")
    task, records, shots = _data(paper_data, "question", "socialqa", 3, 1)
    task = task.model_copy(update={"max_new_tokens": 24})
    ours = evaluate(model, tok, task, records, shots=shots)
    theirs = evaluate(llm, vtok, task, records, shots=shots, backend="vllm")
    assert [p["prediction"] for p in theirs.predictions] == [p["prediction"] for p in ours.predictions]
    assert theirs.metrics["rouge_l"] == ours.metrics["rouge_l"]
    # vLLM decodes past the blank line (no stop string is given): ftgen cuts after it, by its own rule
    from ftgen import vllm_backend
    from ftgen.evaluate import _prepare, cut_at_stop, stops
    from ftgen.prompts import render_context

    context_ids, items = _prepare(task, records, render_context(task, shots, 0), 0, vtok, 2048)
    raw = vllm_backend.generate(llm, task, items, context_ids)
    assert [cut_at_stop(r) for r in raw] == [p["generated"] for p in theirs.predictions]
    assert any(stops(r) and cut_at_stop(r) != r for r in raw)  # the cut mattered for at least one record


def test_ftgen_eval_runs_the_vllm_backend_end_to_end(stand_in_vllm, paper_data, tmp_path):
    from ftgen.eval_run import run_eval

    rows = run_eval(
        "default", "sentiment", tmp_path / "out", data_dir=paper_data, test_sets=["sst2"], limit=3, backend="vllm",
        dtype="fp32",
    )  # fmt: skip
    assert len(rows) == 1 and rows[0]["n"] == 3 and rows[0]["batch"] is None
    metrics = json.loads((tmp_path / "out" / "sst2" / "shots0_fmt0" / "metrics.json").read_text())
    assert metrics["backend"] == "vllm" and metrics["n"] == 3


def test_the_vllm_backend_refuses_an_adapter_dir(stand_in_vllm, tmp_path):
    from ftgen.errors import UserError
    from ftgen.vllm_backend import load_vllm

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="not an adapter dir"):
        load_vllm(str(tmp_path))
