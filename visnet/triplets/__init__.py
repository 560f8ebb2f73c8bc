"""Training triplets: BISS-scored catalog triplets, wild (street) triplets, and human review."""

from visnet.triplets.catalog import (
    CatalogTripletSettings,
    generate_catalog_triplets,
    rank_windows,
    write_catalog_triplets,
)
from visnet.triplets.io import read_triplet_lines, triplet_key, write_triplets
from visnet.triplets.review import ReviewQueue, is_queue_file, queue_lines, review_session
from visnet.triplets.wild import WildTripletSettings, generate_wild_triplets, write_wild_triplets

__all__ = [
    "CatalogTripletSettings",
    "ReviewQueue",
    "WildTripletSettings",
    "generate_catalog_triplets",
    "generate_wild_triplets",
    "is_queue_file",
    "queue_lines",
    "rank_windows",
    "read_triplet_lines",
    "review_session",
    "triplet_key",
    "write_catalog_triplets",
    "write_triplets",
    "write_wild_triplets",
]
