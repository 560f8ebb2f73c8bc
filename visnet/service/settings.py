"""Service settings: one pydantic-settings class; a TOML/JSON file, `VISNET_*` env vars, args."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from visnet.feedback.event_log import EVENTS_FILE
from visnet.index.duplicates import DUPLICATE_THRESHOLD
from visnet.service.schemas import DEFAULT_K

__all__ = ["ENV_PREFIX", "ServiceSettings", "load_settings"]

ENV_PREFIX = "VISNET_"
# the label score from which an uncalibrated detector's category filters its object's search
UNCALIBRATED_CATEGORY_THRESHOLD = 0.8


class ServiceSettings(BaseSettings):
    """Everything the service needs; paths come from here, never probed. Each field can be set
    by its ``VISNET_<NAME>`` environment variable (``VISNET_API_KEY``, ``VISNET_PORT``, ...).

    ``model`` is any name ``visnet.embed.registry.create_embedder`` takes (a checkpoint, an ONNX
    file, a baseline embedder): it must be the model the index was built with.
    ``api_key`` None disables every write endpoint (403); with a key, writes need ``X-API-Key``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True
    )

    index: Path
    model: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, min_length=8)
    review_queue: Path | None = None
    # triplet images' root; default: the one the queue records
    review_root: Path | None = None
    detector: Path | None = None  # None: search the whole photo
    # objects scoring at least this are searched (else the best one)
    detect_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # An object's detected category filters its search only when the detector is at least this
    # sure of it: a wrong filter hides the right product, and an unfiltered search still finds
    # it among look-alikes of every category. None: the detector's own calibrated threshold
    # (`visnet detect calibrate`), or UNCALIBRATED_CATEGORY_THRESHOLD for one never calibrated.
    category_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # An object's category, when the request names none, is first that of its nearest catalog
    # product over every category, if at least this similar: right for 95.8% of the street
    # photos of held-out training products where the detector's own label is right for 46.7%
    # (benchmarks/neighbour_category.py, 2026-12-02, default model and detector; every first
    # neighbour was at least 0.53 similar there). Below it, or None, the detector's label as above.
    neighbour_category_score: float | None = Field(0.5, ge=-1.0, le=1.0)
    max_objects: int = Field(5, ge=1)
    catalog_root: Path | None = None  # default: build.json's catalog_root
    # the web page's sample photos (`visnet samples`); default: INDEX/samples when it exists
    samples_dir: Path | None = None
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)  # the whole request body
    # Connection limits (visnet/service/protocol.py). The request line and headers must arrive
    # within header_timeout s of the connection opening (or of their first byte on a kept-alive
    # connection), else 408 and close; a head over max_header_bytes is answered 431 and closed;
    # an idle kept-alive connection is closed after keep_alive_timeout s.
    header_timeout: float = Field(10.0, gt=0.0, le=600.0)  # s to send the request head
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)  # request line + headers
    keep_alive_timeout: int = Field(30, ge=1, le=3600)  # s an idle kept-alive connection stays
    # "limited": uvicorn's httptools protocol with the two limits above (visnet.service.protocol);
    # "httptools": uvicorn's own, without them: only to measure what the limits cost
    http_protocol: Literal["limited", "httptools"] = "limited"
    # Every upload is checked from its header (pixels, decode bytes, aspect ratio), decoded by at
    # most `decode_workers` threads at once and shrunk at once to `max_image_side`: one decode
    # holds at most `max_decode_bytes` plus a reduced copy (under 300 MB at the defaults,
    # measured in tests/service/test_hostile_images.py); all decodes together at most
    # decode_workers times that. See visnet.images.ImageLimits.
    max_pixels: int = Field(40_000_000, ge=1)
    max_decode_bytes: int = Field(200_000_000, ge=1)
    max_aspect_ratio: float = Field(20.0, ge=1.0)  # longer side / shorter side
    # the detector resizes to 800-1333 px and the model to its input size: 2048 loses nothing
    max_image_side: int = Field(2048, ge=64)
    decode_workers: int = Field(2, ge=1)  # uploads decoded at once
    max_images_per_product: int = Field(8, ge=1)
    # length of the stored recommendation lists; a /similar asking for more is answered live
    precompute_k: int = Field(DEFAULT_K, ge=1)
    # recompute the lists this long after a write; 0: never
    refresh_after_s: float = Field(60.0, ge=0.0)
    # Products whose listing similarity (best cosine over their pairs of views) reaches this are
    # one picture listed under several ids: results and look-alikes show the best-ranked once
    # and name the others. Measured for the default model by benchmarks/near_duplicates.py,
    # between re-listings (collapsed) and colour variants (kept apart); another model needs its
    # own. None (null in a JSON config file): collapse nothing. Stored lists made with another
    # value are answered live until recomputed.
    duplicate_threshold: float | None = Field(DUPLICATE_THRESHOLD, ge=0.0, le=1.0)
    similar_cache_size: int = Field(10_000, ge=0)  # /similar answers kept (cleared on writes)
    product_cache_size: int = Field(100_000, ge=0)  # products kept for result titles (ditto)
    # torch and BLAS threads per call; 0: their defaults (every core)
    compute_threads: int = Field(1, ge=0)
    model_workers: int = Field(1, ge=1)  # model calls (detect, embed) running at once
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    # More connection limits (visnet/service/protocol.py). A request body must arrive within
    # body_timeout s of its headers' end (stalled or trickled: 408 and close; 10 MiB in 60 s is
    # 1.4 Mbit/s). At most max_connections are open: one more closes the connection that has
    # waited longest for a request head (stalled heads cannot lock clients out), or, when every
    # other one has a request in progress, its request is answered 503 with Retry-After.
    body_timeout: float = Field(60.0, gt=0.0, le=3600.0)  # s to send the request body
    max_connections: int = Field(1000, ge=1, le=1_000_000)  # open HTTP connections
    # model calls (a search's detection and embedding, a write's embedding) waiting for one of
    # the model_workers slots; one more is answered 503 `busy` with Retry-After
    model_queue: int = Field(8, ge=1)
    # Shopper events (POST /v1/events, logged in INDEX/events.sqlite). A body over
    # max_event_bytes is refused (413) before it is read; each client address may send
    # events_burst batches at once and events_rate more a second (429 with Retry-After past
    # that): behind a reverse proxy every shopper shares its address, so raise both there.
    max_event_bytes: int = Field(256 * 1024, ge=1024)
    # the event log; default INDEX/events.sqlite. Replicas on one machine (one file system:
    # SQLite's locks do not hold over a network one) may share one, so one report compares them.
    events_file: Path | None = None
    events_rate: float = Field(2.0, gt=0.0)  # batches a second per client address
    events_burst: int = Field(30, ge=1)  # batches a client address may send at once
    # all addresses together (many addresses, or a proxy's raised share, cannot flood the log):
    # events_total_burst batches at once and events_total_rate more a second, past that 503
    # `events_busy` with Retry-After; at most 2 batches are written at once, on threads of their
    # own (a search never waits for the log), and 32 wait (one more: 503 `events_busy`)
    events_total_rate: float = Field(100.0, gt=0.0)
    events_total_burst: int = Field(500, ge=1)
    # The log's size cap (its pages and write-ahead log, checked before each batch): past it
    # each batch is answered 507 `events_full` until the log is archived or the cap raised. The
    # log lives beside the index by default, and a full disk would stop catalog writes too.
    events_max_bytes: int = Field(1024**3, ge=64 * 1024)
    # a batch waits this long for the log's write lock (replicas sharing it) before 503
    # `events_unavailable` with Retry-After, so a locked log holds no thread for long
    events_lock_timeout: float = Field(1.0, gt=0.0, le=60.0)
    # Keep each searched crop (shrunk to 512 px, INDEX/queries/) so `visnet triplets feedback`
    # can make triplets from clicks on search results; crops unused for query_crop_max_age_days
    # are removed at startup and as crops are added, the oldest first past query_crop_max_bytes.
    # One background thread writes them; a crop that finds query_crop_queue crops waiting is
    # not kept (its search answers query_image null; /metrics counts it), never waited for.
    keep_query_crops: bool = True
    query_crop_max_age_days: float = Field(30.0, gt=0.0)
    query_crop_max_bytes: int = Field(2 * 1024**3, ge=1)
    query_crop_queue: int = Field(64, ge=1)

    @field_validator(
        "index",
        "review_queue",
        "review_root",
        "detector",
        "catalog_root",
        "samples_dir",
        "events_file",
    )
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments first, then ``VISNET_*`` variables; no dotenv or secrets files."""
        return init_settings, env_settings

    @property
    def writes_enabled(self) -> bool:
        return self.api_key is not None

    @property
    def events_path(self) -> Path:
        """The shopper event log: ``events_file``, else the index folder's ``events.sqlite``."""
        return self.events_file if self.events_file is not None else self.index / EVENTS_FILE

    @property
    def samples_folder(self) -> Path:
        """Where the sample photos are: ``samples_dir``, else the index folder's ``samples``."""
        return self.samples_dir if self.samples_dir is not None else self.index / "samples"


def _from_file(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    section = data.get("service", data)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: expected a table of settings (optionally under [service])")
    return section


def _explain(exc: ValidationError) -> ValueError:
    """A pydantic error -> one line per bad setting, naming its variable."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        hint = "" if error["type"] == "extra_forbidden" else f" (or {ENV_PREFIX}{name.upper()})"
        lines.append(f"service setting {name}{hint}: {error['msg']}")
    if any(error["type"] == "extra_forbidden" for error in exc.errors()):
        lines.append("known settings: " + ", ".join(ServiceSettings.model_fields))
    return ValueError("; ".join(lines))


def load_settings(config: str | Path | None = None, **overrides: Any) -> ServiceSettings:
    """Settings from, highest priority first: ``overrides`` (None ones are ignored, so CLI
    options left unset fall through), ``VISNET_*`` env vars, a TOML/JSON file, the defaults.

    Raises ``ValueError`` naming every bad or missing setting.
    """
    values = _from_file(Path(config)) if config is not None else {}
    values.update(EnvSettingsSource(ServiceSettings)())  # the variables above the file
    values.update({name: value for name, value in overrides.items() if value is not None})
    try:
        return ServiceSettings(**values)
    except ValidationError as exc:
        raise _explain(exc) from None
