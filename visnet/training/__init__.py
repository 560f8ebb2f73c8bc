"""Training stage: data sets of pairs and triplets, the trainer, and validation during training."""
