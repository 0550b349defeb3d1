"""Configuration as pure data: a training run (`TrainConfig`), one evaluation cell (`EvalParams`) and the study
schema (`StudyConfig`), as pydantic models whose fields carry their types and ranges. No torch, no file reads.

**Which fields determine a result.** Every field of `TrainConfig` and `EvalParams` determines the result of its
unit unless it is declared with `setting(...)` (paths, logging, checkpoint cadence, batch sizes of evaluation,
threads). That one marking is read by `result_fields` / `result_part` and, through them, by everything that asks
"is this the same result?": a unit's key and its stored config (ftgen.plan), the change detection of
`--rerun-changed` (which compares stored configs), and the trainer's resume check (ftgen.train). A worker gets
the whole object (result fields and settings), so the key and the job read the same values.

**RESULT_RULES** goes into every unit's identity. Bump it when a rule outside the config changes results (how
a label is scored, how a prompt is built or truncated, how generation stops): every key changes, so a study
recomputes instead of mixing old and new numbers (`--rerun-changed` keeps the old rows, superseded).

The study YAML (see README "Studies"):

    name: quick
    models: [default]                      # HF ids or local paths too
    train: [{task: sentiment, train_set: amazon, sizes: [200]}]
    methods: [{name: ft}, {name: fticl, shots: {sentiment: 2}}]   # LoRA with lora_r: 8
    # + {name: interpolate, of: ft, alphas: [0.5]}: WiSE-FT models between the base and each ft run
    hyper: {lr: [2e-5], epochs: [2], seeds: [0]}                   # lists expand into a grid
    train_args: {batch_size: 16}           # any other TrainConfig field
    eval: {test_sets: all, shots: {sentiment: [0, 2]}, prompt_formats: [0], limit: 250}
    executor: local                        # or ray; `workers: 2` runs 2 units at once
    analysis: {drift: true, probe_records: 4, attention: false}   # layer profiles come from drift

Checks that need the task definitions or the data run in ftgen.validate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from ftgen.errors import UserError, parse_fields

# Bumped when a scoring, prompt or decoding rule changes results (see the module docstring). History:
#   1  the first rules
#   2  a prompt's trailing whitespace moves into the answer; answers tokenized as they follow a word; Rouge-L
#      without stemming unless the task sets `rouge_stem` (README "Evaluation rules")
RESULT_RULES = 2


# ---------------------------------------------------------------- result fields and settings


def setting(default: Any = ..., description: str | None = None, **kw: Any) -> Any:
    """A field that does not change the unit's result: left out of its key, its resume check and change detection."""
    return Field(default, description=description, json_schema_extra={"result": False}, **kw)


def is_result_field(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return not (isinstance(extra, dict) and extra.get("result") is False)


def result_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Names of the fields of `model` that determine a unit's result, in declaration order."""
    return tuple(name for name, info in model.model_fields.items() if is_result_field(info))


def result_part(obj: BaseModel) -> dict[str, Any]:
    """The result fields of `obj` as JSON values: what a unit's key is hashed from."""
    dump = obj.model_dump(mode="json")
    return {name: dump[name] for name in result_fields(type(obj))}


def changed_result_fields(model: type[BaseModel], old: dict, new: dict) -> list[str]:
    """Result fields of `model` whose values differ between two dumps (a field missing from one counts as None)."""
    return [name for name in result_fields(model) if old.get(name) != new.get(name)]


# ---------------------------------------------------------------- closed sets and bounded numbers

Dtype = Literal["auto", "bf16", "fp16", "fp32"]
Scoring = Literal["sum", "mean", "first-token"]
LrSchedule = Literal["linear", "cosine", "constant"]
Tracker = Literal["tensorboard", "wandb"]

BIG = 10**9  # a bound for counts that only needs to stop absurd values (and 5000-digit integers)
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy seeds must fit 32 bits
Count = Annotated[int, Field(ge=1, le=BIG)]
Shots = Annotated[int, Field(ge=0, le=1024)]
PromptFormat = Annotated[int, Field(ge=0, le=99)]
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1, le=2**20)] | Literal["auto"]
MaxLength = Annotated[int, Field(ge=16, le=2**20)]  # a prompt needs room for a template and an answer
MaxNewTokens = Annotated[int, Field(ge=1, le=4096)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- one training run


class TrainConfig(BaseModel):
    """Everything that defines a training run. Defaults = the paper's recipe."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="model to fine-tune: 'default', an HF id or a local dir")
    task: str = Field(description="task name (or task YAML path)")
    train_set: str | None = Field(None, description="train set name or file; default: the task's first in-domain set")
    train_size: Count | None = Field(None, description="train on the first N records (all if unset)")
    sample_seed: Seed | None = Field(None, description="sample the N records with this seed instead of the first N")
    allow_smaller: bool = Field(False, description="train on all records when the set has fewer than N")
    skip_invalid: bool = Field(False, description="drop (and count) invalid records instead of failing")
    data_dir: str | None = setting(None, "data directory in the paper layout")
    task_dirs: list[str] = setting(default_factory=list, description="directories of user task YAML files")

    epochs: float = Field(2, gt=0, le=10_000, allow_inf_nan=False, description="passes over the train set")
    max_steps: Count | None = Field(None, description="stop after this many optimizer steps (schedule too)")
    lr: PositiveFinite = Field(2e-5, description="peak learning rate")
    lr_schedule: LrSchedule = Field("linear", description="learning-rate schedule after the warm-up")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="fraction of the steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    max_grad_norm: PositiveFinite | None = Field(1.0, description="gradient clipping norm (None: off)")
    batch_size: int = Field(16, ge=1, le=2**20, description="effective batch: examples per optimizer step")
    micro_batch_size: int = Field(16, ge=1, le=2**20, description="most examples per forward pass (per process)")
    micro_batch_tokens: Annotated[int, Field(ge=1, le=2**30)] | Literal["auto"] | None = Field(
        "auto",
        description="most padded tokens per forward pass; auto: from the GPU's memory, 4096 on a CPU, resolved "
        "before the run's key (ftgen.auto_tokens); None: micro_batch_size decides",
    )
    max_length: MaxLength = Field(1024, description="longest training sequence in tokens; longer inputs are cut")
    prompt_format: PromptFormat = Field(0, description="prompt format (template index)")
    group_by_length: bool = Field(True, description="micro-batches of similar length (pad less)")

    fticl_shots: Shots = Field(0, description="FTICL: in-context examples prepended to each training prompt")
    fticl_pool: str | None = Field(None, description="few-shot pool (test set name); default: the train set's")

    lora_r: int | None = Field(None, ge=1, le=4096, description="LoRA rank; None = full fine-tuning")
    lora_alpha: PositiveFinite | None = Field(None, description="LoRA alpha (unset: 2 x rank)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["all-linear"], description="module names to adapt (comma list)"
    )
    qlora: bool = Field(False, description="4-bit base weights (bitsandbytes, CUDA only) under the LoRA adapter")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory")

    seed: Seed = Field(0, description="seed of data order and initialisation")
    dtype: Dtype = Field("auto", description="compute dtype: auto, bf16, fp16 or fp32 (master weights stay fp32)")
    save_every: Count | None = setting(None, "checkpoint every N optimizer steps")
    keep_checkpoints: int = setting(1, "checkpoints kept while training", ge=1, le=1000)
    clean_checkpoints: bool = setting(True, "delete checkpoints/ once the final model is saved")
    log_every: Count = setting(1, "progress-bar update period in steps")
    eval_loss: bool = setting(False, "measure the train-set loss before and after training (forward only)")
    report_to: list[Tracker] = setting(
        default_factory=list,
        description="experiment trackers that get loss, lr and grad norm per step: tensorboard, wandb (comma list; "
        "W&B offline unless WANDB_MODE says otherwise)",
    )
    run_name: str | None = setting(
        None, "the run's readable name: the title of loss.png, the trackers' run name", max_length=200
    )

    @field_validator("lora_targets", "task_dirs", "report_to", mode="before")
    @classmethod
    def _split_commas(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        return _distinct(v, "trackers")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.qlora and self.lora_r is None:
            raise ValueError("qlora needs a LoRA rank (lora_r)")
        if not self.lora_targets:
            raise ValueError("lora_targets: give at least one module name (or 'all-linear')")
        return self


def parse_train_config(data: object, source: str = "train config", rename: dict[str, str] | None = None):
    """A TrainConfig from a dict (YAML / CLI); a bad field is one UserError line naming it (`rename`: field ->
    the name the user wrote it under)."""
    return parse_fields(TrainConfig, data, source, "a training config", rename)


class FieldError(UserError):
    """A UserError about one config field, raised by the library: the CLI names the flag where one was used."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field


# ---------------------------------------------------------------- one evaluation cell


class EvalParams(_Frozen):
    """Everything that defines one evaluation cell, resolved when the study is planned (the key and the
    worker read this one object), plus the settings it runs with."""

    task: str = Field(description="the test task")
    test_set: str
    shots: Shots = Field(description="in-context examples: the first k of the test set's pool")
    fmt: PromptFormat
    scoring: Scoring | None = Field(description="label scoring rule (classification); None for generation")
    max_new_tokens: MaxNewTokens | None = Field(description="generation: most new tokens; None for classification")
    max_length: MaxLength | None = Field(description="longest prompt in tokens (None: the model's)")
    dtype: Dtype
    limit: Count | None = Field(description="first N raw records of the test file")
    skip_invalid: bool
    batch_size: BatchSize = setting(16, "records per forward pass (classification) or decoding batch")
    threads: int | None = setting(None, "torch threads of the process that runs it", ge=1, le=1024)


# ---------------------------------------------------------------- the study


class TrainEntry(_Frozen):
    """One train task: its train set and the train sizes to fine-tune on."""

    task: str
    train_set: str | None = Field(None, description="default: the task's first in-domain set")
    sizes: list[Count] = Field(min_length=1)

    @field_validator("sizes")
    @classmethod
    def _unique(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError("duplicate sizes")
        return sizes


Alpha = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Method(_Frozen):
    """How to fine-tune: plain (`ft`) or with k in-context examples in each training prompt (`fticl`); or
    `interpolate`: no training, θ = (1 − α)·θ_base + α·θ_tuned of each run of the method `of`, for each α
    (WiSE-FT; ftgen.analysis.interpolate), evaluated like any model."""

    name: Literal["ft", "fticl", "interpolate"]
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+\-]+$", description="default: name (+lora)")
    shots: Annotated[int, Field(ge=1, le=1024)] | dict[str, Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        None, description="fticl: k, one for all tasks or per train task; default the task's first fticl_shots"
    )
    lora_r: int = Field(0, ge=0, le=4096, description="0 = full fine-tuning")
    lora_alpha: PositiveFinite | None = None
    of: str | None = Field(None, description="interpolate: the label of the trained method (ft, fticl, ft+lora, ...)")
    alphas: list[Alpha] | None = Field(None, min_length=1, description="interpolate: the α values, each in [0, 1]")

    @property
    def display(self) -> str:
        if self.name == "interpolate":
            return self.label or f"interpolate-{self.of}"
        return self.label or (self.name + ("+lora" if self.lora_r else ""))

    @property
    def trains(self) -> bool:
        return self.name != "interpolate"

    @field_validator("alphas")
    @classmethod
    def _distinct_alphas(cls, alphas: list[float] | None) -> list[float] | None:
        return alphas if alphas is None else _distinct(alphas, "alphas")

    @model_validator(mode="after")
    def _interpolate_fields(self) -> Method:
        given = [f for f in ("of", "alphas") if getattr(self, f) is not None]
        if self.name == "interpolate":
            if len(given) < 2:
                raise ValueError("interpolate needs 'of' (a trained method's label) and 'alphas' (values in [0, 1])")
            if self.shots is not None or self.lora_r or self.lora_alpha is not None:
                raise ValueError("interpolate trains nothing: shots, lora_r and lora_alpha belong to the method 'of'")
        elif given:
            raise ValueError(f"'{given[0]}' is a field of the method 'interpolate' only")
        return self


class Hyper(_Frozen):
    """Hyper-parameter lists: every combination is one training run (per task, size and method)."""

    lr: list[float] = Field([2e-5], min_length=1)
    epochs: list[Annotated[float, Field(gt=0, le=10_000, allow_inf_nan=False)]] = Field([2], min_length=1)
    seeds: list[Seed] = Field([0], min_length=1)

    @field_validator("lr")
    @classmethod
    def _positive(cls, lrs: list[float]) -> list[float]:
        if not all(0 < lr < float("inf") for lr in lrs):  # NaN fails every comparison
            raise ValueError("learning rates must be finite and > 0")
        return lrs


def _distinct(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {what}")
    return values


class EvalSpec(_Frozen):
    test_sets: Literal["all"] | dict[str, Annotated[list[str], Field(min_length=1)] | Literal["all"]] = Field(
        "all", description="all test sets of all tasks, or {task: [sets] | all}"
    )
    shots: list[int] | dict[str, list[int]] | None = Field(
        None, description="test-time shots, for every task or per task; default [0, the task's first k]"
    )
    prompt_formats: list[PromptFormat] = Field([0], min_length=1)
    limit: Count | None = Field(250, description="first N raw records of each test file (the paper: 250)")
    max_new_tokens: dict[str, MaxNewTokens] = Field(
        default_factory=dict, description="generation tasks: {task: N} instead of the task's max_new_tokens"
    )
    skip_invalid: bool = True
    scoring: Scoring = "sum"
    batch_size: BatchSize = Field(
        "auto", description="records per forward pass; auto: the largest that fits on a GPU, 16 on a CPU (ftgen.memory)"
    )
    generation_batch_size: BatchSize | None = Field(
        None, description="default: batch_size; decoding runs one step per batch and token, so bigger pays more"
    )
    max_length: MaxLength | None = None
    dtype: Dtype = Field("auto", description="compute dtype of evaluation (auto: bf16 where the CPU/GPU runs it fast)")
    base: bool = Field(True, description="evaluate the base model(s) too (needed for deltas)")

    @field_validator("shots")
    @classmethod
    def _shots(cls, shots):
        lists = shots.values() if isinstance(shots, dict) else [shots] if shots is not None else []
        for lst in lists:
            if not lst:
                raise ValueError("an empty list of shots")
            if not all(0 <= k <= 1024 for k in lst):
                raise ValueError("shots must be between 0 and 1024")
            _distinct(lst, "shots")
        return shots

    @field_validator("prompt_formats")
    @classmethod
    def _formats(cls, fmts: list[int]) -> list[int]:
        return _distinct(fmts, "prompt formats")


class RayOptions(_Frozen):
    address: str | None = Field(None, description="an existing cluster; default: start a local one")
    num_cpus: int | None = Field(None, ge=1, le=1 << 20, description="CPUs of the local cluster (default: all)")
    train_cpus: PositiveFinite = 1
    train_gpus: float = Field(0, ge=0, le=1024, allow_inf_nan=False)
    eval_cpus: PositiveFinite = 1
    eval_gpus: float = Field(0, ge=0, le=1024, allow_inf_nan=False)


class AnalysisSpec(_Frozen):
    drift: bool = Field(True, description="after each training run: weight drift and KL vs the base model")
    probe_records: int = Field(4, ge=1, le=10_000, description="records per evaluated task in the drift probe set")
    attention: bool = Field(
        False,
        description="after each training run: the answer position's attention on in-context examples, base and "
        "tuned, on the train task's in-domain test set k-shot (ftgen.analysis.attention)",
    )
    attention_records: int = Field(8, ge=1, le=10_000, description="records of the attention analysis")


class StudyConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$", max_length=200, description="not starting with '.'")
    models: list[str] = Field(["default"], min_length=1)
    data_dir: str | None = Field(None, description="paper-layout data dir, relative to the YAML; --data-dir wins")
    task_dirs: list[str] = Field(default_factory=list, description="directories of user task YAML files (ditto)")
    train: list[TrainEntry] = Field(default_factory=list)
    methods: list[Method] = Field(default_factory=lambda: [Method(name="ft")], min_length=1)
    hyper: Hyper = Hyper()
    train_args: dict[str, Any] = Field(default_factory=dict, description="other TrainConfig fields")
    eval: EvalSpec = EvalSpec()
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1, le=256, description="local: units at once (1 = in this process; more = processes)")
    threads: int | None = Field(
        None, ge=1, le=1024, description="torch threads per unit (default: torch's own); 1 per worker on a shared CPU"
    )
    ray: RayOptions = RayOptions()
    analysis: AnalysisSpec = AnalysisSpec()
    keep_models: bool = Field(
        True, description="false: delete each trained model once its cells are done and its drift measured"
    )
    export: bool = Field(False, description="after the study: write OUT/export (results.json, predictions.jsonl)")

    @field_validator("models")
    @classmethod
    def _models(cls, models: list[str]) -> list[str]:
        return _distinct(models, "models")

    @property
    def train_methods(self) -> list[Method]:
        """The methods that train a model (not `interpolate`)."""
        return [m for m in self.methods if m.trains]

    @property
    def interpolations(self) -> list[Method]:
        """The `interpolate` methods: each names a trained method (`of`) and its α values."""
        return [m for m in self.methods if not m.trains]


# Fields a study sets itself for each training run: they may not appear under train_args.
STUDY_OWNED_TRAIN_FIELDS = {
    "model": "models",
    "task": "train.N.task",
    "train_set": "train.N.train_set",
    "train_size": "train.N.sizes",
    "data_dir": "data_dir",
    "task_dirs": "task_dirs",
    "lr": "hyper.lr",
    "epochs": "hyper.epochs",
    "seed": "hyper.seeds",
    "fticl_shots": "methods.N.shots",
    "lora_r": "methods.N.lora_r",
    "lora_alpha": "methods.N.lora_alpha",
    "run_name": "(nothing: the study names each run after its coordinates)",
}


def parse_study(data: object, source: str = "study config") -> StudyConfig:
    return parse_fields(StudyConfig, data, source, "a study config")


# ---------------------------------------------------------------- paths


def check_out_dir(out: str | Path, data_dir: str | Path | None, option: str = "--out") -> None:
    """Results never go into the data: `out` may not be the data directory or lie inside it."""
    if data_dir is None:
        return
    out_path, data = Path(out).expanduser().resolve(), Path(data_dir).expanduser().resolve()
    if out_path == data or data in out_path.parents:
        raise UserError(f"{option} {out}: inside the data directory {data_dir}; write results elsewhere")
