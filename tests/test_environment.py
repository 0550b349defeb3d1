"""What a unit records about where it ran (ftgen.environment), read later by the report's provenance: versions,
device, dtype and the base model's identity, recorded by a real evaluation cell on a tiny random model."""

from __future__ import annotations

import hashlib
import importlib.metadata

import pytest
from test_train import make_tiny_model

from ftgen.environment import fingerprint, model_identity, versions
from ftgen.store import canonical_json, manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("env") / "tiny-llama")


def test_versions_are_the_installed_packages():
    v = versions()
    for name in ("ftgen", "torch", "transformers", "peft", "accelerate"):
        assert v[name] == importlib.metadata.version(name)
    assert v["python"].count(".") == 2


def test_a_checkpoints_fingerprint_is_the_hash_of_its_manifest_and_follows_its_files(tiny, tmp_path):
    import shutil

    assert fingerprint(tiny) == hashlib.sha256(canonical_json(manifest(tiny)).encode()).hexdigest()
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert fingerprint(copy) == fingerprint(tiny)  # content, not place
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert fingerprint(copy) != fingerprint(tiny)


def test_the_default_model_resolves_to_its_real_name_path_and_hash(default_model_dir):
    identity = model_identity("default")
    assert identity == {
        "name": "default",
        "resolved": "SmolLM2-135M-Instruct",
        "path": str(default_model_dir.resolve()),
        "sha256": fingerprint(default_model_dir),
        "revision": None,
    }


@pytest.mark.parametrize("base", [True, False])
def test_an_evaluation_cell_records_device_dtype_versions_and_the_base_models_identity(tiny, paper_data, base):
    from ftgen.config import EvalParams
    from ftgen.units import EvalJob, ModelCache, execute_eval

    params = EvalParams(
        task="sentiment",
        test_set="amazon",
        shots=0,
        fmt=0,
        scoring="sum",
        max_new_tokens=None,
        max_length=256,
        dtype="fp32",
        limit=4,
        skip_invalid=True,
    )
    job = EvalJob("k", str(tiny), params, str(paper_data), (), "test", base=base)
    env = execute_eval(job, ModelCache())["metrics"]["environment"]
    assert (env["device"], env["dtype"], env["versions"]) == ("cpu", "fp32", versions())
    assert env["device_name"] and env["host"] and env["torch_threads"] >= 1
    if base:
        assert env["model"] == {
            "name": str(tiny),
            "resolved": "tiny-llama",
            "path": str(tiny.resolve()),
            "sha256": fingerprint(tiny),
            "revision": None,
        }
    else:
        assert env["model"] is None  # a trained model's identity is its manifest, recorded with its run
