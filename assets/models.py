"""Stage ``models``: the base model every later stage scores and trains with."""

from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from assets.corpus import DOCUMENTS, DOCUMENTS_TABLE
from assets.lineage import governance
from assets.resources import BaseModelResource, DeltaStoreResource
from cpt.models.base_model import (
    ModelManifest,
    ModelSourceError,
    describe,
    resolve_hub,
    resolve_local,
    resolve_smollm2,
)
from cpt.models.pretrain import PretrainConfig, pretrained_once

BASE_MODEL = dg.AssetKey(["models", "base_model"])


@dg.asset(
    key=BASE_MODEL,
    deps=[DOCUMENTS],
    group_name="models",
    kinds={"pytorch", "huggingface"},
    io_manager_key="manifest_io_manager",
    code_version="base-model-v1",
    **governance("models"),
    description="The base model of every later stage (one manifest): where it lives, its content revision, file "
    "hashes, parameter count and tokenizer; for the self-pretrained quick-start model, its loss curve.",
)
def base_model(context: dg.AssetExecutionContext, model: BaseModelResource, delta: DeltaStoreResource) -> dg.Output:
    try:
        manifest = _resolve(context, model, delta)
    except ModelSourceError as exc:
        raise dg.Failure(description=str(exc)) from exc
    curve = manifest.details.get("loss_curve")
    metadata = {
        "source": manifest.source,
        "path": dg.MetadataValue.path(manifest.path),
        "revision": manifest.revision,
        "n_params": manifest.n_params,
        "tokenizer": dg.MetadataValue.json(manifest.tokenizer),
        "file_hashes": dg.MetadataValue.json(manifest.file_hashes),
        "details": dg.MetadataValue.json({k: v for k, v in manifest.details.items() if k != "loss_curve"}),
    }
    if curve:
        metadata["loss_curve"] = dg.MetadataValue.md(
            "| tokens | train loss |\n|---|---|\n" + "".join(f"| {t:,} | {loss:.3f} |\n" for t, loss in curve)
        )
        metadata["final_train_loss"] = curve[-1][1]
    return dg.Output(manifest.to_json(), metadata=metadata, data_version=dg.DataVersion(manifest.revision))


def _resolve(context: dg.AssetExecutionContext, model: BaseModelResource, delta: DeltaStoreResource) -> ModelManifest:
    cache = Path(model.cache_dir)
    if model.kind == "local":
        if not model.path:
            raise ModelSourceError("base model kind 'local' needs a path (CPTDATA_BASE_MODEL)")
        return resolve_local(model.path)
    if model.kind == "hub":
        if not (model.hub_id and model.hub_revision):
            raise ModelSourceError("base model kind 'hub' needs hub_id and a pinned hub_revision")
        return resolve_hub(model.hub_id, model.hub_revision)
    if model.kind == "smollm2":
        return resolve_smollm2(cache)
    if model.kind != "pretrain":
        raise ModelSourceError(f"unknown base model kind {model.kind!r} (pretrain, smollm2, local, hub)")
    store = delta.store()
    version = store.version(DOCUMENTS_TABLE)
    if version is None:
        raise ModelSourceError("the quick-start base model is pretrained on corpus/documents: ingest it first")
    docs = store.read(DOCUMENTS_TABLE, version, columns=["doc_id", "role", "split", "text"])
    docs = docs.filter(pc.and_(pc.equal(docs["role"], "general"), pc.equal(docs["split"], "train")))
    config = PretrainConfig(
        vocab_size=model.pretrain_vocab_size,
        hidden_size=model.pretrain_hidden_size,
        intermediate_size=model.pretrain_intermediate_size,
        num_layers=model.pretrain_layers,
        token_budget=model.pretrain_token_budget,
        seed=model.pretrain_seed,
    )
    context.log.info(f"quick-start model: {docs.num_rows} general documents, {config.token_budget:,} tokens")
    folder, curve, trained = pretrained_once(
        docs["text"].to_pylist(),
        docs["doc_id"].to_pylist(),
        config,
        cache,
        on_progress=lambda step, total, loss: context.log.info(f"pretrain step {step}/{total}: loss {loss:.3f}"),
    )
    context.log.info(f"{'pretrained' if trained else 'reused the model pretrained earlier'}: {folder}")
    details = {"pretrain_config": vars(config), "documents_version": version, "training_documents": docs.num_rows}
    return describe(folder, "pretrain", details | {"loss_curve": curve, "pretrained_in_this_run": trained})
