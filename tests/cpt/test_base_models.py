"""Base-model sources: local folders are pinned by content; SmolLM2-135M comes out of its wheel, once."""

import shutil

import pytest
import torch

from cpt.models.base_model import ModelManifest, ModelSourceError, load_model, resolve_local, resolve_smollm2
from cpt.scoring.scorer import ChunkScorer
from cpt.scoring.windows import WindowPolicy, chunk_documents


def test_local_models_are_pinned_by_their_content(tiny_model_dir, tmp_path):
    manifest = resolve_local(tiny_model_dir)
    assert manifest.source == "local" and manifest.n_params > 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest.file_hashes)
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert resolve_local(copy).revision == manifest.revision  # same files, same revision, wherever they live
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("silu", "gelu"))
    assert resolve_local(copy).revision != manifest.revision
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_local(tmp_path / "missing")


@pytest.mark.slow
def test_smollm2_is_converted_once_and_scores_medical_text_sensibly(tmp_path):
    first = resolve_smollm2(tmp_path)
    assert first.source == "smollm2" and 134e6 < first.n_params < 135e6
    assert first.tokenizer["vocab_size"] == 49152 and first.tokenizer["bos_token"] == "<|endoftext|>"
    converted = next(tmp_path.glob("smollm2-135m-*"))
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    second = resolve_smollm2(tmp_path)
    assert second.revision == first.revision
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again

    model, tokenizer = load_model(first.path)
    text = (
        "Diabetes is a disease in which blood glucose levels are too high. Insulin, a hormone made by the "
        "pancreas, helps glucose from food get into cells to be used for energy."
    )
    chunks = chunk_documents(tokenizer, ["d"], [text], WindowPolicy(length=256, min_tokens=8), first.revision)
    [score], _ = ChunkScorer(model, pad_id=tokenizer.pad_token_id, device=torch.device("cpu")).score(chunks)
    assert 1.5 < score.ppl < 60  # a pretrained model: far below the 49,152 of a uniform guess
