"""`ftgen bench gpu`: one device check, about 10 minutes on one GPU, one summary at the end.

From a checkout with its dependencies and the paper data present:
    1. models       `ftgen models`: the device and dtype ftgen picks
    2. eval         evaluation throughput of the default model at batch 16 and at "auto" (0-shot and k-shot)
    3. train        `ftgen bench train --baseline trainer,trl`: tokens/s, MFU against the device's own peak
    4. estimate     the paper grid (configs/paper.yaml) estimated from rates measured on this device with a
                    random-weight model of Llama-2-7B's shape (ftgen.calibrate)
    5. study        a small study, timed end to end (`ftgen study`)
Each step runs on its own: one that fails is reported in the summary and the next one runs. `--quick`
runs the same steps at tiny sizes (a tiny random model instead of 7B): on a CPU, in a few minutes, so
that a test keeps this script from rotting.

The paper-grid estimate is `ftgen study configs/paper.yaml --dry-run --calibrate` with the random-weight
model in place of the config's (ftgen.study_rates): its units measured in miniature on this device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ftgen.bench import default_data_dir, say
from ftgen.errors import UserError, one_line

# Llama-2-7B's shape; vocab_size is the default model's tokenizer's (49152, not 32000): the random model
# uses that tokenizer, so its embedding is 1.1% of params larger than Llama-2-7B's.
LLAMA2_7B_SHAPE = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,
    "tie_word_embeddings": False,
}
TINY_LLAMA_SHAPE = LLAMA2_7B_SHAPE | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@dataclass
class Sizes:
    """How big each step is: the full check for a GPU, or `--quick` for a CPU."""

    eval_records: int = 500
    eval_shots: tuple[int, ...] = (0, 4)
    train_records: int = 512
    train_max_length: int = 512
    calib_shape: dict = field(default_factory=lambda: LLAMA2_7B_SHAPE)
    study: str | None = "configs/quick.yaml"  # None: a tiny generated study


QUICK = Sizes(
    eval_records=8,
    eval_shots=(0, 2),
    train_records=16,
    train_max_length=128,
    calib_shape=TINY_LLAMA_SHAPE,
    study=None,
)

TINY_STUDY = """\
name: gpu-check
models: [default]
train: [{task: sentiment, train_set: amazon, sizes: [8]}]
methods: [{name: ft}]
hyper: {lr: [1.0e-4], epochs: [1], seeds: [0]}
train_args: {batch_size: 8, max_length: 256}
eval:
  test_sets: {sentiment: [sst2]}
  shots: {sentiment: [0]}
  limit: 4
analysis: {drift: false}
"""


def _ftgen(*args: str, timeout: int = 600, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTGEN_QUIET": "1"} | ({"FTGEN_CACHE": str(cache)} if cache else {})
    return subprocess.run(
        [sys.executable, "-m", "ftgen", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _checked(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1]}")
    return proc.stdout


# ---------------------------------------------------------------- the steps


def step_models(ctx: dict) -> dict:
    out = _checked(_ftgen("models"))
    say(out.rstrip())
    return {"device line": next((line for line in out.splitlines() if line.startswith("device:")), "")}


def step_eval(ctx: dict) -> dict:
    """Records/s of the default model at batch 16 and "auto", on sst2, 0-shot and k-shot."""
    from ftgen.bench.eval import _load_set
    from ftgen.device import current_device, timed
    from ftgen.evaluate import evaluate
    from ftgen.models import load_model

    sizes, device = ctx["sizes"], current_device()
    model, tokenizer = load_model("default")
    result = {}
    for k in sizes.eval_shots:
        task, records, shots = _load_set(ctx["data_dir"], "sentiment:sst2", sizes.eval_records, k)
        evaluate(model, tokenizer, task, records[:4], shots=shots, batch_size=16)  # warm-up
        preds = {}
        for batch in (16, "auto"):
            with timed(device) as t:
                r = evaluate(model, tokenizer, task, records, shots=shots, batch_size=batch)
            preds[batch] = [p["prediction"] for p in r.predictions]
            rate = len(records) / t["seconds"]
            result[f"{k}-shot batch {batch}"] = f"{rate:.1f} rec/s (batch {r.metrics['batch_size']})"
            say(f"  sst2 {k}-shot, batch {batch}: {rate:.1f} records/s, batch used {r.metrics['batch_size']}")
        same = sum(a == b for a, b in zip(preds[16], preds["auto"], strict=True))
        result[f"{k}-shot same predictions"] = f"{same}/{len(records)}"
    return result


def step_train(ctx: dict) -> dict:
    from ftgen.bench.train import run

    sizes = ctx["sizes"]
    s = run(
        ctx["data_dir"], records=sizes.train_records, max_length=sizes.train_max_length, baselines=("trainer", "trl")
    )
    ours = s["results"]["ftgen"]
    return {
        "ftgen tokens/s": f"{ours['tokens_per_s']:.0f}",
        "MFU (device peak)": f"{ours['mfu']:.1%} of {s['peak_flops'] / 1e12:.1f} TFLOP/s",
        "speedup vs Trainer": f"{s['speedup_trainer']:.2f} (losses agree: {s['losses_agree_trainer']})",
        "speedup vs TRL": f"{s['speedup_trl']:.2f} (losses agree: {s['losses_agree_trl']})",
    }


def step_estimate(ctx: dict) -> dict:
    """The paper grid with a random-weight model of the configured shape, estimated from its units measured in
    miniature on this device: what `ftgen study PAPER --dry-run --calibrate` prints (ftgen.study_rates)."""
    import yaml

    from ftgen.costs import disk_estimate, estimate, fmt_bytes
    from ftgen.files import read_yaml
    from ftgen.plan import load_plan
    from ftgen.progress import fmt_seconds
    from ftgen.study_rates import calibrate_plan, unit_rates

    sizes, out = ctx["sizes"], ctx["out"]
    shape = out / ("llama-2-7b-shape.json" if sizes.calib_shape is LLAMA2_7B_SHAPE else "tiny-llama.json")
    shape.write_text(json.dumps(sizes.calib_shape, indent=2))
    model = f"random:{shape.resolve()}"
    study = read_yaml(ctx["paper_config"]) | {"models": [model]}
    config = out / "paper-random.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    plan = load_plan(config, ctx["data_dir"], allow_random=True)
    rates = calibrate_plan(plan, log=say)[model]
    (out / "rates.json").write_text(json.dumps(rates.as_json(), indent=2))
    est, disk = estimate(plan, rates=unit_rates({model: rates})), disk_estimate(plan)
    for note in rates.notes:
        say(f"  note: {note}")
    r = rates.rates
    say(
        f"  {ctx['paper_config']} with {shape.name}: {len(plan.runs)} training runs, {len(plan.cells)} cells; "
        f"calibrated estimate {fmt_seconds(est['total_s'])} (training {fmt_seconds(est['train_s'])}, evaluation "
        f"{fmt_seconds(est['eval_s'])}), disk {fmt_bytes(disk['total_bytes'])}"
    )
    result = {
        "model": f"{shape.name} on {rates.device}, {rates.dtypes}",
        "rates (cost-model units)": f"train {r.train_tokens_s:.4g} tokens/s, prefill {r.prefill_tokens_s:.4g} "
        f"tokens/s, decode {r.decode_steps_s:.4g} steps/s, load {r.load_s:.1f}s",
        "peak GiB": ", ".join(f"{k} {v / 2**30:.1f}" for k, v in rates.peak_bytes.items()),
        "paper grid: units": f"{len(plan.runs)} runs, {len(plan.cells)} cells",
        "paper grid: calibrated": fmt_seconds(est["total_s"]),
        "paper grid: training": fmt_seconds(est["train_s"]),
        "paper grid: evaluation": fmt_seconds(est["eval_s"]),
        "paper grid: disk": fmt_bytes(disk["total_bytes"]),
    }
    if rates.notes:
        result["notes"] = "; ".join(rates.notes)
    if sizes.calib_shape is not LLAMA2_7B_SHAPE:
        result["paper grid: note"] = "rates of a tiny random model (--quick): a wiring check, not an estimate"
    return result


def _private_cache(out: Path) -> Path:
    """A cache dir sharing the user's models but not their study calibration, which a check must not change."""
    from ftgen.models import cache_dir, default_model_dir

    default_model_dir()  # built once, in the user's cache
    private = out / "cache"
    private.mkdir(exist_ok=True)
    if not (private / "models").exists():
        (private / "models").symlink_to((cache_dir() / "models").resolve(), target_is_directory=True)
    return private


def step_study(ctx: dict) -> dict:
    sizes, out = ctx["sizes"], ctx["out"]
    cache = _private_cache(out)
    if sizes.study is None:
        config = out / "tiny-study.yaml"
        config.write_text(TINY_STUDY)
    else:
        config = Path(sizes.study)
    data = str(ctx["data_dir"])
    estimate = _checked(_ftgen("study", str(config), "--dry-run", "--data-dir", data, cache=cache))
    t0 = time.perf_counter()
    _checked(_ftgen("study", str(config), "--out", str(out / "study"), "--data-dir", data, cache=cache))
    seconds = time.perf_counter() - t0
    line = next((x for x in estimate.splitlines() if x.startswith("estimate:")), "")
    say(f"  {config}: {seconds:.0f}s end to end; the dry run said: {line}")
    return {"config": str(config), "end to end": f"{seconds:.0f}s", "dry run": line.split("(")[0].strip()}


STEPS = {
    "models": step_models,
    "eval": step_eval,
    "train": step_train,
    "estimate": step_estimate,
    "study": step_study,
}


def run(
    out: Path,
    data_dir: Path | None = None,
    *,
    quick: bool = False,
    steps: tuple[str, ...] = tuple(STEPS),
    paper_config: Path = Path("configs/paper.yaml"),
) -> dict:
    """Run the steps in order; print one summary; return {step: {status, seconds, numbers}}."""
    from accelerate.utils.memory import clear_device_cache

    from ftgen.device import device_name
    from ftgen.files import atomic_write_json, ensure_writable_dir

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UserError(f"--steps: unknown step(s) {', '.join(bad)} (use {', '.join(STEPS)})")
    data_dir = data_dir or default_data_dir()
    if "estimate" in steps and not Path(paper_config).is_file():
        raise UserError(f"{paper_config}: no such study config (run from the checkout or give --paper-config)")
    ensure_writable_dir(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    ctx = {"sizes": QUICK if quick else Sizes(), "data_dir": data_dir, "out": Path(out), "paper_config": paper_config}
    say(f"bench gpu{' --quick' if quick else ''} on {device_name()}: steps {', '.join(steps)}")
    summary: dict[str, dict] = {}
    t_all = time.perf_counter()
    for name in steps:
        say(f"== {name}")
        t0 = time.perf_counter()
        try:
            numbers, status = STEPS[name](ctx), "ok"
        except Exception as e:  # one step's failure is a line of the summary, not the end of the check
            numbers, status = {"error": one_line(f"{type(e).__name__}: {e}")[:300]}, "FAILED"
            say(f"  {name} failed: {numbers['error']}")
        summary[name] = {**numbers, "status": status, "seconds": round(time.perf_counter() - t0, 1)}
        clear_device_cache(garbage_collection=True)  # what a step left goes back: the 7B model needs the room
    _print_summary(summary, time.perf_counter() - t_all, device_name())
    atomic_write_json(Path(out) / "summary.json", summary)
    return summary


def _print_summary(summary: dict, seconds: float, device: str) -> None:
    say(f"== summary: {device}, {seconds:.0f}s")
    for name, s in summary.items():
        say(f"{name:9} {s['status']:7} {s['seconds']:7.1f}s")
        for k, v in s.items():
            if k not in ("status", "seconds"):
                say(f"{'':19}{k}: {v}")
    failed = [n for n, s in summary.items() if s["status"] != "ok"]
    say(
        f"bench gpu: {len(summary) - len(failed)} of {len(summary)} steps ok"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
