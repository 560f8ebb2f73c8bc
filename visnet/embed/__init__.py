"""Feature vectors: the one batch embedding pipeline, the shard job built on it, the one model
resolver, ONNX export and runtime."""
