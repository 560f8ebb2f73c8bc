"""Learning from shoppers: the event log, click-through reports, and triplets for review."""

from visnet.feedback.event_log import EVENTS_FILE, EventLog, EventLogFullError
from visnet.feedback.event_schema import (
    MAX_EVENTS,
    BatchError,
    BatchResult,
    Event,
    EventBatch,
    EventProblem,
    fingerprint_token,
    new_query_id,
    parse_batch,
)
from visnet.feedback.limits import RateLimiter
from visnet.feedback.queries import prune_query_crops, query_crop_path, store_query_crop

__all__ = [
    "EVENTS_FILE",
    "MAX_EVENTS",
    "BatchError",
    "BatchResult",
    "Event",
    "EventBatch",
    "EventLog",
    "EventLogFullError",
    "EventProblem",
    "RateLimiter",
    "fingerprint_token",
    "new_query_id",
    "parse_batch",
    "prune_query_crops",
    "query_crop_path",
    "store_query_crop",
]
