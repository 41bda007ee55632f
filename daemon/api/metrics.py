"""``/metrics``: Prometheus metrics, read from PostgreSQL and Redis at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from daemon.api._hub import ControlDep
from hookdrop.latency import latency_histogram
from hookdrop.ops import Control

router = APIRouter(tags=["system"])


class Collector:
    """Reads everything at scrape time; nothing is kept in this process."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        control = self.control
        totals = control.outcome_totals()
        view = control.overview()
        alerts = CounterMetricFamily(
            "hookdrop_alerts", "Alerts that reached an end state.", labels=["status"]
        )
        for status in ("delivered", "rejected", "dead", "cancelled"):
            alerts.add_metric([status], totals[status])
        yield alerts
        yield CounterMetricFamily(
            "hookdrop_invalid_rows",
            "Rows that could not become alerts.",
            value=totals["invalid_rows"],
        )
        depth = GaugeMetricFamily(
            "hookdrop_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        workers = GaugeMetricFamily(
            "hookdrop_workers", "Live RQ workers per queue.", labels=["queue"]
        )
        for name, count in view["queues"].items():
            depth.add_metric([name], count)
            workers.add_metric([name], view["workers"][name])
        yield depth
        yield workers
        yield GaugeMetricFamily(
            "hookdrop_dlq_size", "Alerts waiting in the DLQ.", value=view["dlq"]
        )
        yield GaugeMetricFamily(
            "hookdrop_dead_alerts", "Alerts dead (awaiting a replay).", value=view["dead"]
        )
        yield GaugeMetricFamily(
            "hookdrop_active_files",
            "Files being read or delivered.",
            value=view["files"].get("active", 0),
        )
        pressure = view["backpressure"]
        yield GaugeMetricFamily(
            "hookdrop_backpressure_active",
            "1 while a 429 holds every notifier off.",
            value=int(pressure["active"]),
        )
        yield GaugeMetricFamily(
            "hookdrop_backpressure_seconds_left",
            "Seconds left on the back-pressure flag.",
            value=pressure["seconds_left"],
        )
        yield GaugeMetricFamily(
            "hookdrop_deliveries_per_second",
            "Accepted webhook calls per second over the last 10 s.",
            value=view["delivered_per_second"],
        )
        current = view["rate_limit"]["current"]
        if current is not None:
            yield GaugeMetricFamily(
                "hookdrop_rate_limit_current",
                "The adaptive global rate limit (requests/s).",
                value=current,
            )
        yield from _per_endpoint(control.endpoints())
        buckets, total = latency_histogram(control.redis, control.keys)
        yield HistogramMetricFamily(
            "hookdrop_delivery_latency_seconds",
            "Webhook call latency of delivered alerts.",
            buckets=buckets,
            sum_value=total,
        )


def _per_endpoint(endpoints: list[dict[str, Any]]) -> Iterator[Metric]:
    """The same for each endpoint, labelled ``endpoint``."""
    label = ["endpoint"]
    delivered = CounterMetricFamily(
        "hookdrop_endpoint_alerts", "Alerts that reached an end state.", labels=[*label, "status"]
    )
    waiting = GaugeMetricFamily(
        "hookdrop_endpoint_open_alerts", "Alerts on their way, by state.", labels=[*label, "state"]
    )
    pressure = GaugeMetricFamily(
        "hookdrop_endpoint_backpressure_active", "1 while a 429 holds it off.", labels=label
    )
    breaker = GaugeMetricFamily(
        "hookdrop_endpoint_breaker_open",
        "1 while its circuit breaker is open (or probing).",
        labels=label,
    )
    failures = GaugeMetricFamily(
        "hookdrop_endpoint_breaker_failures", "Consecutive failures counted.", labels=label
    )
    rate = GaugeMetricFamily(
        "hookdrop_endpoint_rate_limit_current", "Rate limit in force (requests/s).", labels=label
    )
    speed = GaugeMetricFamily(
        "hookdrop_endpoint_deliveries_per_second",
        "Accepted webhook calls per second over the last 10 s.",
        labels=label,
    )
    for view in endpoints:
        name = [view["name"]]
        counts = view["counts"]
        for status in ("delivered", "rejected", "dead"):
            delivered.add_metric([*name, status], counts[status])
        for state in ("pending", "sending", "retrying", "throttled", "dlq", "deferred"):
            waiting.add_metric([*name, state], counts.get(state, 0))
        pressure.add_metric(name, int(view["backpressure"]["active"]))
        breaker.add_metric(name, int(view["breaker"]["state"] != "closed"))
        failures.add_metric(name, view["breaker"]["failures"])
        if view["rate_limit"]["current"] is not None:
            rate.add_metric(name, view["rate_limit"]["current"])
        speed.add_metric(name, view["delivered_per_second"])
    yield from (delivered, waiting, pressure, breaker, failures, rate, speed)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics(control: ControlDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(control))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
