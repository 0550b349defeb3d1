"""Training on real computation: the label mask on real tokens, length grouping, loss normalisation
across gradient accumulation, exact resume (in-process stop and a real SIGKILL), checkpoints that
transformers / PEFT reload with the same numbers, FTICL prompts, bad inputs, a full disk.

Most runs use a tiny random-weight Llama (2 layers, width 32, the default model's tokenizer) so that
they take seconds; the reload tests fine-tune the real default model (one optimizer step each).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftgen.batching import IGNORE, collate, epoch_plan, split_micro
from ftgen.config import TrainConfig
from ftgen.errors import UserError
from ftgen.loss import response_loss
from ftgen.train import load_records, tokenize, train


def make_tiny_model(path: Path) -> Path:
    """A 2-layer Llama with random weights and the default model's tokenizer, saved as an HF checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftgen.models import load_tokenizer

    tok = load_tokenizer("default")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer():
    from ftgen.models import load_tokenizer

    return load_tokenizer("default")


def tiny_cfg(tiny_model: str, paper_data: Path, **kw) -> TrainConfig:
    base = dict(
        model=tiny_model,
        task="sentiment",
        train_size=24,
        data_dir=str(paper_data),
        epochs=2,
        lr=1e-3,
        batch_size=4,
        micro_batch_size=2,
        max_length=96,
    )
    return TrainConfig(**(base | kw))


def weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    assert files, f"no weights in {path}"
    out = {}
    for f in files:
        out |= load_file(f)
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs: max abs diff {(wa[k] - wb[k]).abs().max().item()}"


def loss_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- data, mask, batching


def test_label_mask_on_a_real_record(paper_data, tokenizer):
    """Last prompt token predicts the first answer token; the final EOS is trained although pad == eos."""
    cfg = TrainConfig(task="sentiment", train_size=5, data_dir=str(paper_data))
    task, ds, shots = load_records(cfg)
    data = tokenize(cfg, task, ds, shots, tokenizer)
    pairs = sorted(zip(data.examples, ds.records, strict=True), key=lambda p: len(p[0].ids))
    (ex_short, rec_short), (ex_long, _) = pairs[0], pairs[-1]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap this test is about
    assert tokenizer.decode(ex_short.ids[ex_short.n_prompt :]) == f" {rec_short['output']}{tokenizer.eos_token}"
    assert tokenizer.decode(ex_short.ids[: ex_short.n_prompt]).endswith("### Sentiment:")

    batch = collate([ex_long, ex_short], tokenizer.pad_token_id)
    n, p = len(ex_short.ids), ex_short.n_prompt
    ids, targets, mask = batch["input_ids"][1], batch["targets"][1], batch["attention_mask"][1]
    assert ids.shape[0] == len(ex_long.ids) > n  # padded on the right, to this batch's longest only
    assert mask[:n].all() and not mask[n:].any()
    assert (ids[n:] == tokenizer.pad_token_id).all()
    assert targets[p - 1] == ex_short.ids[p]  # the last prompt token predicts the first answer token
    assert (targets[: p - 1] == IGNORE).all()  # no prompt token is a target
    assert targets[n - 2] == tokenizer.eos_token_id  # the EOS that ends the answer is trained
    assert (targets[n - 1 :] == IGNORE).all()  # nothing after it, padding included
    assert (batch["targets"] != IGNORE).sum(1).tolist() == [ex_long.n_answer, ex_short.n_answer]
    # targets are the next input tokens wherever kept
    kept = targets != IGNORE
    assert torch.equal(targets[:-1][kept[:-1]], ids[1:][kept[:-1]])


def test_fticl_prompts_hold_the_pool_shots_and_train_only_the_answer(paper_data, tokenizer):
    from ftgen.data import load_pool

    cfg = TrainConfig(task="sentiment", train_size=3, data_dir=str(paper_data), fticl_shots=2)
    task, ds, shots = load_records(cfg)
    pool = load_pool(paper_data, task, "amazon").records
    assert [s["id"] for s in shots] == [s["id"] for s in pool[:2]]  # the first k, as evaluation picks
    data = tokenize(cfg, task, ds, shots, tokenizer)
    for ex, rec in zip(data.examples, ds.records, strict=True):
        prompt = tokenizer.decode(ex.ids[: ex.n_prompt])
        for shot in pool[:2]:
            assert shot["input"][:40] in prompt
            assert f"### Sentiment: {shot['output']}\n\n" in prompt
        assert prompt.rstrip().endswith(rec["input"][-20:].rstrip() + "\n### Sentiment:")
        assert tokenizer.decode(ex.ids[ex.n_prompt :]) == f" {rec['output']}{tokenizer.eos_token}"
    plain = tokenize(TrainConfig(task="sentiment", train_size=3, data_dir=str(paper_data)), task, ds, [], tokenizer)
    assert all(len(a.ids) > len(b.ids) for a, b in zip(data.examples, plain.examples, strict=True))


def test_length_grouping_plan():
    lengths = [(i * 37) % 101 + 5 for i in range(50)]  # 5 .. 105 tokens

    def plan(**kw):
        args = dict(batch_size=8, micro=4, max_tokens=None, seed=0, epoch=0) | kw
        return epoch_plan(lengths, args.pop("batch_size"), args.pop("micro"), args.pop("max_tokens"), **args)

    p = plan()
    assert len(p) == 7 and all(len(step) == 1 for step in p)  # 50 examples / 8 per step; one process
    seen = [i for step in p for mb in step[0] for i in mb]
    assert sorted(seen) == list(range(50))  # every example once per epoch
    assert sorted(sum(len(mb) for mb in step[0]) for step in p) == [2] + [8] * 6  # 50 = 6 x 8 + 2
    assert p == plan()  # a pure function of (seed, epoch): what makes resume exact
    assert p != plan(epoch=1) and p != plan(seed=1)

    def padded(p):
        return sum(max(lengths[i] for i in mb) * len(mb) for step in p for share in step for mb in share if mb)

    assert padded(p) < 0.8 * padded(plan(group_by_length=False))

    # the token cap: short examples many to a pass, long ones few, never over the cap
    capped = plan(micro=8, max_tokens=200)
    for step in capped:
        for mb in step[0]:
            assert len(mb) * max(lengths[i] for i in mb) <= 200 or len(mb) == 1
    sizes = {len(mb) for step in capped for mb in step[0]}
    assert min(sizes) < 4 < max(sizes)

    # a long tail is cut off (7 x 10 + 1 x 100 tokens beat 8 x 100), except with fixed micro-batches (DeepSpeed)
    tail = [10] * 7 + [100]
    assert split_micro(list(range(8)), tail, 16, 4096) == [list(range(7)), [7]]
    assert split_micro(list(range(8)), tail, 16, None) == [list(range(8))]

    # two processes: each takes half of every step; a short share gets a no-op (None) pass
    two = plan(world=2, max_tokens=120)
    for step, one in zip(two, p, strict=True):
        assert len(step) == 2 and len(step[0]) == len(step[1])
        assert sorted(i for share in step for mb in share if mb for i in mb) == sorted(i for mb in one[0] for i in mb)
    assert any(mb is None for step in two for share in step for mb in share)


# ---------------------------------------------------------------- loss normalisation


def test_accumulation_gives_the_full_batch_gradient(tiny_model, paper_data, tmp_path):
    """1 x 8 and 4 x 2 (accumulated) give the same step: loss and gradient normalised by the window's tokens.

    The question task's answers have different lengths, so a mean of per-micro-batch means would differ.
    """
    runs = {}
    for micro in (8, 2):
        cfg = tiny_cfg(
            tiny_model, paper_data, task="question", train_size=8, batch_size=8, micro_batch_size=micro
        ).model_copy(update={"epochs": 1, "dtype": "fp32", "max_grad_norm": None})
        train(cfg, tmp_path / f"m{micro}")
        runs[micro] = loss_rows(tmp_path / f"m{micro}")[0]
    data = tokenize(*_loaded(tiny_cfg(tiny_model, paper_data, task="question", train_size=8)))
    counts = {e.n_answer for e in data.examples}
    assert len(counts) > 1, "answers of equal length would not tell the normalisations apart"
    assert runs[8]["loss"] == pytest.approx(runs[2]["loss"], rel=1e-6)
    assert runs[8]["grad_norm"] == pytest.approx(runs[2]["grad_norm"], rel=1e-4)
    w8, w2 = weights(tmp_path / "m8" / "model"), weights(tmp_path / "m2" / "model")
    for k in w8:
        torch.testing.assert_close(w8[k], w2[k], rtol=0, atol=1e-6)


def test_response_loss_equals_the_models_own_loss_or_training_refuses(tiny_model, paper_data):
    """The head-on-response shortcut is checked against the model's forward(labels=...) before training."""
    from ftgen.loss import check_response_loss
    from ftgen.models import load_model

    cfg, task, ds, shots, tok = _loaded(tiny_cfg(tiny_model, paper_data, task="question", train_size=4))
    examples = tokenize(cfg, task, ds, shots, tok).examples
    model, _ = load_model(tiny_model, dtype="fp32")
    with torch.no_grad():  # sharper logits than a random init's, so post-processing them shows
        model.get_output_embeddings().weight.mul_(50)
    check_response_loss(model, examples, tok.pad_token_id)  # agrees: no error
    model.config.final_logit_softcapping = 1.0  # what ResponseLoss applies but Llama's forward does not
    with pytest.raises(UserError, match="differs from the model's own loss"):
        check_response_loss(model, examples, tok.pad_token_id)


def _loaded(cfg):
    from ftgen.models import load_tokenizer

    task, ds, shots = load_records(cfg)
    return cfg, task, ds, shots, load_tokenizer(cfg.model)


# ---------------------------------------------------------------- real fine-tuning, reload


@pytest.mark.slow  # the real default model: ~45 s alone, minutes on a busy machine
def test_full_fine_tuning_lowers_the_loss_and_reloads_identically(paper_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftgen.models import load_model

    cfg = TrainConfig(
        task="sentiment",
        train_size=4,
        data_dir=str(paper_data),
        epochs=1,
        lr=5e-5,
        batch_size=4,
        micro_batch_size=2,
        max_length=64,
        eval_loss=True,
    )
    out = tmp_path / "full"
    s = train(cfg, out)  # one optimizer step of 2 x 2 examples
    assert s["steps"] == 1 and s["kind"] == "full" and s["compute_dtype"] in ("bfloat16", "float32")
    assert s["loss_after"] < 0.8 * s["loss_before"], s
    assert (out / "loss.png").stat().st_size > 1000 and len(loss_rows(out)) == 1
    assert json.loads((out / "train_summary.json").read_text())["loss_after"] == s["loss_after"]
    assert not (out / "checkpoints").exists()

    # a bare transformers load of the checkpoint gives the numbers the trainer measured on its live model
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    _, tok = load_model(str(out / "model"), dtype="fp32")
    task, ds, shots = load_records(cfg)
    data = tokenize(cfg, task, ds, shots, tok)
    assert response_loss(model, data.examples, tok.pad_token_id, dtype=s["compute_dtype"]) == s["loss_after"]
    ours, _ = load_model(str(out / "model"), dtype="fp32")
    x = torch.tensor([data.examples[0].ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ours(x).logits)


@pytest.mark.slow  # the real default model: ~45 s alone, minutes on a busy machine
def test_lora_adapter_reloads_with_peft(paper_data, default_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftgen.models import load_model, load_tokenizer

    cfg = TrainConfig(
        task="sentiment",
        train_size=4,
        data_dir=str(paper_data),
        epochs=1,
        lr=1e-3,
        batch_size=4,
        micro_batch_size=4,
        max_length=64,
        lora_r=4,
        lora_targets=["q_proj", "v_proj"],
        eval_loss=True,
    )
    out = tmp_path / "lora"
    s = train(cfg, out)
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]).resolve() == default_model_dir.resolve()
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["r"] == 4
    assert s["trainable_params"] < s["params"] / 100
    assert s["loss_after"] < s["loss_before"]

    tok = load_tokenizer(str(out / "model"))
    task, ds, shots = load_records(cfg)
    data = tokenize(cfg, task, ds, shots, tok)
    base = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, out / "model").eval()
    assert response_loss(peft_model, data.examples, tok.pad_token_id, dtype=s["compute_dtype"]) == s["loss_after"]
    merged, _ = load_model(str(out / "model"), dtype="fp32")  # ftgen's loader merges the adapter
    x = torch.tensor([data.examples[0].ids])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"], dtype=torch.float32)
        adapted = peft_model(x).logits
        change = (plain(x).logits - adapted).abs().max()
        assert change > 1e-2  # the adapter does something
        # merging reorders fp32 sums, which this model's huge activations amplify: close, not equal
        assert (merged(x).logits - adapted).abs().max() < 0.05 * change


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-with-dropout"])
def test_resume_after_a_stop_ends_with_the_same_weights(tiny_model, paper_data, tmp_path, lora):
    kw = {"lora_r": 4, "lora_dropout": 0.2, "lora_targets": ["q_proj", "v_proj", "down_proj"]} if lora else {}
    cfg = tiny_cfg(tiny_model, paper_data, save_every=3, **kw)  # 24 records / 4 = 6 steps per epoch, 12 in all
    train(cfg, tmp_path / "straight")

    out = tmp_path / "stopped"
    assert train(cfg, out, stop_after=5) == {"stopped_at": 5, "total_steps": 12}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]
    assert not (out / "model").exists()
    s = train(cfg, out, resume=True)  # replays steps 4-5 from the step-3 checkpoint
    assert s["resumed_from_step"] == 3 and s["steps"] == 12
    assert_same_weights(tmp_path / "straight" / "model", out / "model")
    if lora:  # saved in one order whatever the process's hash seed (PEFT keeps the targets in a set)
        adapter = json.loads((out / "model" / "adapter_config.json").read_text())
        assert adapter["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in loss_rows(out)]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in loss_rows(tmp_path / "straight")]
    # resuming a finished run is a no-op that returns its summary; a fresh run refuses to overwrite it
    assert train(cfg, out, resume=True)["elapsed_s"] == s["elapsed_s"]
    with pytest.raises(UserError, match="already holds a trained model"):
        train(cfg, out)


def test_resume_refuses_a_changed_config(tiny_model, paper_data, tmp_path):
    cfg = tiny_cfg(tiny_model, paper_data, save_every=2, epochs=1)
    train(cfg, tmp_path, stop_after=3)
    with pytest.raises(UserError, match=r"config differs.*lr: 0.001 -> 0.002"):
        train(cfg.model_copy(update={"lr": 2e-3}), tmp_path, resume=True)
    with pytest.raises(UserError, match="--resume"):
        train(cfg, tmp_path)


@pytest.mark.slow
def test_resume_after_sigkill(tiny_model, paper_data, tmp_path):
    """A real `ftgen train` process killed with SIGKILL mid-run, resumed: same weights as a straight run."""
    args = ["train", "--model", tiny_model, "--task", "sentiment", "--train-size", "24", "--data-dir"]
    args += [str(paper_data), "--epochs", "2", "--lr", "1e-3", "--effective-batch-size", "4", "--micro-batch-size", "2"]
    args += ["--max-length", "96", "--save-every", "2"]
    code = "import sys; from ftgen.cli import main; sys.argv[0] = 'ftgen'; main()"
    env = {**os.environ, "FTGEN_QUIET": "1"}

    def run(out: Path, *extra: str):
        return subprocess.run([sys.executable, "-c", code, *args, "--out", str(out), *extra], env=env, timeout=600)

    assert run(tmp_path / "straight").returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(out)], env=env)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-4").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its step-4 checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "model").exists()
    assert run(out, "--resume").returncode == 0
    assert_same_weights(tmp_path / "straight" / "model", out / "model")


# ---------------------------------------------------------------- bad input, full disk


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from ftgen.cli import main

    monkeypatch.setattr(sys, "argv", ["ftgen", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--train-size", "999999"], "--allow-smaller"),
        (["--fticl-shots", "9"], "pool 'amazon' has only 8"),
        (["--lora-r", "4", "--lora-targets", "q_proj,nope_proj"], "unknown LoRA target module(s) nope_proj"),
        (["--lora-r", "4", "--qlora"], "CUDA"),
        (["--micro-batch-size", "0"], "--micro-batch-size': Input should be greater than or equal to 1"),
        (["--train-set", "nope"], "unknown train set 'nope'"),
        (["--dtype", "fp8"], "--dtype': Input should be 'auto', 'bf16', 'fp16' or 'fp32'"),
    ],
)
def test_bad_input_is_one_line_exit_2(monkeypatch, capsys, tiny_model, paper_data, tmp_path, extra, needle):
    code, err = run_main(
        monkeypatch, capsys, "train", "--model", tiny_model, "--task", "sentiment", "--data-dir", str(paper_data),
        "--train-size", "8", "--max-length", "64", "--out", str(tmp_path / "o"), *extra,
    )  # fmt: skip
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ftgen:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "o" / "model").exists()


def test_allow_smaller_trains_on_all_records(tiny_model, paper_data, tmp_path):
    fake = tmp_path / "small_train_10.json"
    records = [{"input": f"review {i}", "output": ["positive", "negative"][i % 2]} for i in range(10)]
    fake.write_text(json.dumps(records))
    with pytest.raises(UserError, match="--allow-smaller"):
        load_records(tiny_cfg(tiny_model, paper_data, train_set=str(fake), train_size=20))
    s = train(tiny_cfg(tiny_model, paper_data, train_set=str(fake), train_size=20, allow_smaller=True), tmp_path / "o")
    assert s["records"] == 10


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


@pytest.mark.parametrize("disk_kind", ["tmpfs", "injected"])
def test_a_full_disk_at_checkpoint_time_leaves_no_partial_checkpoint(
    tiny_model, paper_data, tmp_path, monkeypatch, disk_kind
):
    """A real full filesystem (a 12 MiB tmpfs; needs root), and ENOSPC injected after a partial write."""
    disk = tmp_path / "disk"
    mounted = False
    if disk_kind == "tmpfs":
        mounted = _tmpfs(disk, "12m")  # the tiny model's checkpoint is ~19 MiB (weights + AdamW state)
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (not root); the injected variant covers the logic")
    else:
        import errno

        import accelerate.checkpointing as ac

        def save_then_fail(obj, f, *a, **kw):  # write some bytes, then fail as a full disk does
            Path(f).write_bytes(b"\0" * 1024)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ac, "save", save_then_fail)
    try:
        out = disk / "run"
        with pytest.raises(UserError, match="no space left on device") as e:
            train(tiny_cfg(tiny_model, paper_data, save_every=2), out)
        assert "--resume" in str(e.value) and "\n" not in str(e.value)
        assert list((out / "checkpoints").iterdir()) == []  # no step-2, no temp dir
        assert not (out / "model").exists()
        del e  # its traceback holds the file torch.save had open on the tmpfs
    finally:
        if mounted:
            gc.collect()
            subprocess.run(["umount", "-l", str(disk)], check=True)
