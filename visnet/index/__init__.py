"""Vector index: the store protocol, the embedded store, products, PCA and the catalog façade."""

from visnet.index.catalog_index import CatalogIndex, Hit
from visnet.index.embedded import EmbeddedStore, StoreSettings
from visnet.index.partitions import HnswParams
from visnet.index.pca import PCA, fit_pca, l2_normalise
from visnet.index.products import Product, ProductStore, UnknownProductError
from visnet.index.protocol import IndexMismatchError, StoreError, VectorStore

__all__ = [
    "PCA",
    "CatalogIndex",
    "EmbeddedStore",
    "HnswParams",
    "Hit",
    "IndexMismatchError",
    "Product",
    "ProductStore",
    "StoreError",
    "StoreSettings",
    "UnknownProductError",
    "VectorStore",
    "fit_pca",
    "l2_normalise",
]
