"""The Ray engine of the feature-vector job: on a local Ray instance, the same shards as the
local job (vectors to float tolerance, rows, skips, manifest), and either job resumes the other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from visnet.data.synthetic import make_synthetic_set
from visnet.embed.job import catalog_rows, read_shards, run_embed_job
from visnet.embed.onnx import export_onnx
from visnet.embed.ray_engine import RayEngine, RaySettings
from visnet.embed.registry import create_embedder
from visnet.model import create_model, save_checkpoint

pytestmark = pytest.mark.slow  # a local Ray instance and two actors: about 30 s here


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray  # the `scale` extra, which `make setup` installs

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_the_ray_job_writes_the_local_jobs_shards_and_resumes_it(
    tmp_path: Path, local_ray: None
) -> None:
    root = tmp_path / "set"
    make_synthetic_set(root, seed=3)
    rows = catalog_rows(root)
    Path(rows[6].image).write_bytes(b"not an image")  # skipped by both, with the same reason
    model = export_onnx(save_checkpoint(tmp_path / "m.pt", create_model("default", seed=0)),
                        tmp_path / "m.onnx")  # fmt: skip
    embedder = create_embedder(model, batch_size=4)
    local = run_embed_job(root, embedder, tmp_path / "local", shard_size=5)
    # each actor reserves memory (scheduling only): the path a cluster should take
    engine = RayEngine(RaySettings(str(model), workers=2, batch_size=3, memory_per_worker=0.25))
    remote = run_embed_job(root, embedder, tmp_path / "ray", shard_size=5, engine=engine)

    assert remote == local and remote["skipped"][0]["image"] == rows[6].image
    local_vectors, local_rows, _ = read_shards(tmp_path / "local")
    ray_vectors, ray_rows, _ = read_shards(tmp_path / "ray")
    assert ray_rows == local_rows and len(ray_rows) == len(rows) - 1
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)
    assert sum(s.images for s in engine.stats.values()) == len(rows)
    assert all(s.rate > 0 for s in engine.stats.values())

    # killed while writing shard 2: the local job finishes what the Ray job began, and only that
    first = (tmp_path / "ray" / "shard-00001.npy").stat().st_mtime_ns
    (tmp_path / "ray" / "shard-00002.json").unlink()
    (tmp_path / "ray" / "manifest.json").unlink()
    assert run_embed_job(root, embedder, tmp_path / "ray", shard_size=5) == local
    assert (tmp_path / "ray" / "shard-00001.npy").stat().st_mtime_ns == first
    assert json.loads((tmp_path / "ray" / "job.json").read_text())["shard_size"] == 5


def test_the_ray_engine_needs_an_explicit_backend() -> None:
    with pytest.raises(ValueError, match="explicit backend"):
        RaySettings("m.onnx", backend="auto")
    with pytest.raises(ValueError, match="workers >= 1"):
        RaySettings("m.onnx", workers=0)
    with pytest.raises(ValueError, match="memory_per_worker"):
        RaySettings("m.onnx", memory_per_worker=-1)
