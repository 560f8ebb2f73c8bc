"""Which vector store holds an index's vectors: the embedded store or Milvus (``VISNET_STORE``).

The one place a `VectorStore` is chosen and opened for a catalog index, so ``visnet index
build``, ``visnet serve``, ``visnet index rebuild`` and the benchmarks choose alike:

- a **new** index takes the store the settings name (``VISNET_STORE=embedded``, the default, or
  ``milvus``); a Milvus one gets a new collection, named in the index manifest;
- an **existing** index uses the store its manifest names; ``VISNET_MILVUS_URI`` and
  ``VISNET_MILVUS_TOKEN`` say how to reach it (the URI defaults to the one it was built with;
  a token is never written down). Asking for one store (``VISNET_STORE`` set) while opening an
  index of the other is refused.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from visnet.index.embedded import EmbeddedStore, StoreSettings
from visnet.index.protocol import IndexMismatchError, VectorStore

__all__ = ["ENGINES", "StoreChoice", "discard_store", "open_store", "store_manifest"]

log = logging.getLogger(__name__)

ENGINES = ("embedded", "milvus")
Engine = Literal["embedded", "milvus"]


class StoreChoice(BaseSettings):
    """The vector store settings, each from its ``VISNET_<NAME>`` environment variable.

    ``store``: ``embedded`` or ``milvus``. ``milvus_uri``: a server (``http://host:19530``) or a
    local ``*.db`` file (Milvus Lite). ``milvus_index``: FLAT, HNSW, IVF_FLAT, IVF_SQ8, IVF_PQ,
    DISKANN or AUTOINDEX (default FLAT on Lite, HNSW on a server); ``milvus_index_params`` and
    ``milvus_search_params`` are JSON objects over that type's defaults
    (``visnet.index.milvus.INDEX_TYPES``); ``milvus_partition_key`` (default: on a server only);
    ``milvus_replicas``: in-memory replicas when loading a collection that is not loaded.
    """

    model_config = SettingsConfigDict(
        env_prefix="VISNET_", env_ignore_empty=True, extra="ignore", frozen=True
    )

    store: Engine = "embedded"
    milvus_uri: str | None = None
    milvus_token: SecretStr | None = None
    milvus_index: str | None = None
    milvus_index_params: dict[str, Any] = {}
    milvus_search_params: dict[str, Any] = {}
    milvus_partition_key: bool | None = None
    milvus_replicas: int | None = None

    def reading(self) -> StoreChoice:
        """These settings asking for no store: to open an index wherever its manifest says
        (a rebuild reads the old index there and writes the new one where ``store`` says)."""
        copy = self.model_copy()
        copy.__pydantic_fields_set__.discard("store")
        return copy

    def milvus(self, saved: dict[str, Any] | None = None) -> Any:
        """`MilvusSettings` from these settings over an index manifest's ``saved`` ones."""
        from visnet.index.milvus import MilvusSettings

        saved = saved or {}
        uri = self.milvus_uri or saved.get("uri")
        if not uri:
            raise ValueError(
                "VISNET_STORE=milvus needs VISNET_MILVUS_URI: a Milvus server "
                "(http://host:19530) or a local file ending in .db (Milvus Lite)"
            )
        return MilvusSettings(
            uri=uri,
            token=self.milvus_token.get_secret_value() if self.milvus_token else "",
            index_type=saved.get("index_type") or self.milvus_index,
            index_params=saved.get("index_params", self.milvus_index_params),
            search_params={**saved.get("search_params", {}), **self.milvus_search_params},
            partition_key=saved.get("partition_key", self.milvus_partition_key),
            replicas=self.milvus_replicas,
        ).located()


def engine_of(saved: dict[str, Any]) -> str:
    """The store an index manifest's ``store`` entry names (older manifests: embedded)."""
    return str(saved.get("engine", "embedded"))


def store_manifest(choice: StoreChoice, settings: StoreSettings) -> dict[str, Any]:
    """A new index's manifest ``store`` entry: the embedded settings, or a new collection."""
    if choice.store == "milvus":
        return choice.milvus().to_manifest(f"visnet_{uuid.uuid4().hex[:16]}")
    return settings.to_manifest()


def open_store(
    folder: Path,
    manifest: dict[str, Any],
    choice: StoreChoice,
    settings: StoreSettings | None = None,
    create: bool = False,
) -> VectorStore:
    """The vector store of the index whose manifest this is (``folder``: the embedded store's
    files); ``create`` makes its Milvus collection. ``settings``: the embedded store's
    (default: the manifest's)."""
    saved = manifest["store"]
    engine = engine_of(saved)
    if "store" in choice.model_fields_set and choice.store != engine:
        raise IndexMismatchError(
            f"index {folder.parent} keeps its vectors in the {engine} store; VISNET_STORE "
            f"asks for {choice.store}. Unset VISNET_STORE, or rebuild the index with it"
        )
    dim = int(manifest["vector_dim"])
    if engine == "embedded":
        return EmbeddedStore(dim, folder, settings or StoreSettings.from_manifest(saved))
    from visnet.index.milvus import MilvusStore

    identity = {
        "model_fingerprint": manifest["model_fingerprint"],
        "pca_fingerprint": (manifest["pca"] or {}).get("fingerprint"),
    }
    open_or_make = MilvusStore.create if create else MilvusStore.open
    return open_or_make(dim, choice.milvus(saved), saved["collection"], identity)


def discard_store(store: VectorStore) -> None:
    """Drop what a store holds outside its index folder (a Milvus collection), else close it:
    for an index that is being thrown away (a failed build's)."""
    drop = getattr(store, "drop", None)
    if callable(drop):
        drop()
    else:
        store.close()
