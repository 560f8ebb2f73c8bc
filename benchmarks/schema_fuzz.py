"""Schema fuzzer: schemathesis against a real server on 127.0.0.1, checking /openapi.json is true.

Serves a small index (the tiny synthetic set, or a copy of --index) with a review queue and an
API key, loads the server's /openapi.json, and sends every operation generated requests: valid
and invalid ones, boundary values (schemathesis' coverage phase), random ones (fuzzing) and
chains of calls (stateful), with the key. Each response is checked against the schema documented
for its status (`response_schema_conformance`) and must not be a 5xx (`not_a_server_error`).
Prints a table of checks and failures and of the statuses each operation answered; exits 1 on
any failure or error.

    python benchmarks/schema_fuzz.py                          # all phases, 20 examples each
    python benchmarks/schema_fuzz.py --max-examples 100 --phases coverage,fuzzing,stateful
    python benchmarks/schema_fuzz.py --index data/demo-index --model models/visnet-default.pt

`tests/service/test_schema.py` runs a short one (every phase, 5 examples: about 10 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events, from_schema

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from service_helpers import (  # noqa: E402
    build_tiny_catalog,
    running_server,
    seed_review_queue,
    service_settings,
)

from visnet.service import create_app  # noqa: E402

CHECKS = (  # the first two are the point; the others keep the documented statuses true
    "response_schema_conformance",
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
KEY = "schema-fuzz-key-0123456789"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--index", type=Path, help="index folder to serve a copy of (default: tiny)")
    p.add_argument("--model", default="colour-histogram", help="the index's model")
    p.add_argument("--max-examples", type=int, default=20, help="per operation and phase")
    p.add_argument("--phases", type=lambda v: v.split(","), default=list(PHASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report here")
    return p.parse_args()


@dataclass
class Report:
    """What the run checked and found."""

    checks: dict[str, Counter] = field(default_factory=lambda: {c: Counter() for c in CHECKS})
    statuses: dict[str, Counter] = field(default_factory=dict)  # operation -> status -> count
    failures: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failed(self, check: str) -> int:
        return self.checks[check]["failure"]

    @property
    def ok(self) -> bool:
        return not self.errors and not any(self.failed(c) for c in CHECKS)

    def record(self, recorder: object) -> None:
        """Tally one finished scenario's responses and check results."""
        for case_id, interaction in recorder.interactions.items():  # type: ignore[attr-defined]
            if interaction.response is not None:
                case = recorder.cases[case_id].value  # type: ignore[attr-defined]
                counts = self.statuses.setdefault(case.operation.label, Counter())
                counts[interaction.response.status_code] += 1
        for case_id, results in recorder.checks.items():  # type: ignore[attr-defined]
            for result in results:
                if result.name not in self.checks:
                    continue
                self.checks[result.name][str(result.status.value)] += 1
                if result.failure_info is not None:
                    failure = result.failure_info.failure
                    case = recorder.cases[case_id].value  # type: ignore[attr-defined]
                    self.failures.append(
                        {
                            "check": result.name,
                            "operation": case.operation.label,
                            "title": str(failure.title),
                            "message": str(failure.message)[:500],
                            "curl": result.failure_info.code_sample,
                        }
                    )

    def to_json(self) -> dict:
        return {
            "checks": {c: dict(n) for c, n in self.checks.items()},
            "failures": {c: self.failed(c) for c in CHECKS},
            "statuses": {op: {str(s): n for s, n in c.items()} for op, c in self.statuses.items()},
            "failure_details": self.failures,
            "errors": self.errors,
            "seconds": round(self.seconds, 1),
        }


def steer(schema: object, product_ids: list[str], photos: list[bytes]) -> None:
    """Half the generated product ids are real ones and half the uploads real photos, so the
    fuzzer reaches the answers behind "no such product" and "not an image" too."""

    @schema.hook  # type: ignore[attr-defined]
    def flatmap_path_parameters(context: object, path_parameters: dict) -> st.SearchStrategy:
        if not path_parameters or "product_id" not in path_parameters:
            return st.just(path_parameters)
        real = st.sampled_from(product_ids).map(lambda pid: {**path_parameters, "product_id": pid})
        return st.one_of(st.just(path_parameters), real)

    @schema.hook  # type: ignore[attr-defined]
    def flatmap_body(context: object, body: object) -> st.SearchStrategy:
        if isinstance(body, dict) and isinstance(body.get("events"), list):
            real = st.lists(st.sampled_from(product_ids), min_size=1, max_size=1)
            return st.one_of(st.just(body), real.map(lambda ids: _real_events(body, ids[0])))
        if not isinstance(body, dict) or not {"image", "images"} & body.keys():
            return st.just(body)
        photo = st.sampled_from(photos)
        if "image" in body:  # a search
            real = photo.map(lambda data: {**body, "image": data})
        else:  # a product upload: one to three real views
            real = st.lists(photo, min_size=1, max_size=3).map(lambda v: {**body, "images": v})
        return st.one_of(st.just(body), real)


def _real_events(body: dict, product: str) -> dict:
    """`body`'s events naming the real `product` (impressions show it once), so some batches
    are stored and reach the 200 answer rather than "unknown product"."""
    events = []
    for event in body["events"]:
        if not isinstance(event, dict):
            events.append(event)
            continue
        event = {**event, "product": product} if "product" in event else dict(event)
        if isinstance(event.get("shown"), list):
            event["shown"] = [{"product": product, "position": 1}]
        if event.get("anchor") is not None:
            event["anchor"] = product
        events.append(event)
    return {**body, "events": events}


def fuzz(
    base_url: str,
    api_key: str,
    max_examples: int,
    phases: list[str],
    seed: int,
    steering: tuple[list[str], list[bytes]] | None = None,
) -> Report:
    """Run schemathesis' phases against the server at ``base_url``; ``steering``: real product
    ids and photos to mix into the generated requests (see `steer`)."""
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "cache": {"enabled": False},  # no .schemathesis/ folder: each run stands alone
            "suppress-health-check": ["all"],
            "workers": 1,
            "auth": {"openapi": {"ApiKey": {"api_key": api_key}}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "generation": {"max-examples": max_examples},
            "phases": {name: {"enabled": name in phases} for name in PHASES},
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    if steering is not None:
        steer(schema, *steering)
    report, start = Report(), time.perf_counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            report.record(event.recorder)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
    report.seconds = time.perf_counter() - start
    return report


def product_ids(index: Path, limit: int = 1000) -> list[str]:
    """Some of the served index's product ids (read-only, beside the server's lock)."""
    uri = f"file:{index / 'products.sqlite'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        return [row[0] for row in db.execute("SELECT id FROM products LIMIT ?", (limit,))]


def print_report(report: Report) -> None:
    print(f"\n{'check':32s} {'passed':>8s} {'failed':>8s}")
    for check, counts in report.checks.items():
        print(f"{check:32s} {counts['success']:8d} {counts['failure']:8d}")
    print(f"\n{'operation':44s} {'requests':>8s}  statuses")
    for operation, counts in sorted(report.statuses.items()):
        listed = " ".join(f"{s}:{n}" for s, n in sorted(counts.items()))
        print(f"{operation:44s} {sum(counts.values()):8d}  {listed}")
    seen = set()
    for failure in report.failures:
        key = (failure["check"], failure["operation"], failure["title"])
        if key not in seen:
            seen.add(key)
            print(f"\nFAILED {failure['check']} on {failure['operation']}: {failure['title']}")
            print(f"  {failure['message'][:300]}\n  {failure['curl']}")
    for error in report.errors:
        print(f"\nERROR {error}")
    verdict = "ok" if report.ok else "FAILED"
    print(
        f"\n{verdict}: {sum(report.failed(c) for c in CHECKS)} failures, "
        f"{len(report.errors)} errors in {report.seconds:.1f}s"
    )


def main() -> None:
    args = parse_args()
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        sys.exit(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    with tempfile.TemporaryDirectory(prefix="visnet-schema-fuzz-") as tmp:
        work = Path(tmp)
        root, index = build_tiny_catalog(work)  # its photos also feed the review queue
        if args.index is not None:  # the fuzzer writes (with the key): serve a copy
            index = work / "served-index"
            shutil.copytree(args.index, index, ignore=shutil.ignore_patterns("*.lock"))
        queue = seed_review_queue(root, work / "review.sqlite")
        settings = service_settings(
            index=index,
            model=args.model,
            api_key=KEY,
            review_queue=queue,
            refresh_after_s=0,
            events_burst=10_000,  # one client sends every batch: the rate limit is tested apart
        )
        with running_server(create_app(settings)) as url:
            photos = [p.read_bytes() for p in sorted((root / "photos").glob("*.jpg"))[:4]]
            steering = (product_ids(index), photos)
            report = fuzz(url, KEY, args.max_examples, args.phases, args.seed, steering)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
