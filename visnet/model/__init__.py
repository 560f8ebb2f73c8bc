"""Model stage: backbone registry, VisNet (deep + shallow), losses, checkpoints, embedder."""

from visnet.model.backbones import (
    DeepBranch,
    create_backbone,
    list_backbones,
    load_pretrained,
    register_backbone,
)
from visnet.model.checkpoint import fingerprint, load_model, read_checkpoint, save_checkpoint
from visnet.model.embedder import ModelEmbedder, untrained_embedder
from visnet.model.loss import (
    PAPER_MARGIN,
    InBatchContrastive,
    TripletLoss,
    batch_hard_triplet_loss,
    squared_euclidean,
)
from visnet.model.preprocess import Preprocess
from visnet.model.visnet import (
    PRESETS,
    VisNet,
    VisNetConfig,
    branch_shapes,
    create_model,
    get_config,
)

__all__ = [
    "PAPER_MARGIN",
    "PRESETS",
    "DeepBranch",
    "InBatchContrastive",
    "ModelEmbedder",
    "Preprocess",
    "TripletLoss",
    "VisNet",
    "VisNetConfig",
    "batch_hard_triplet_loss",
    "branch_shapes",
    "create_backbone",
    "create_model",
    "fingerprint",
    "get_config",
    "list_backbones",
    "load_model",
    "load_pretrained",
    "read_checkpoint",
    "register_backbone",
    "save_checkpoint",
    "squared_euclidean",
    "untrained_embedder",
]
