"""Feature-vector stage: embed a catalog in batches into vector shards; ONNX export and runtime."""
