"""Prometheus metrics of one server (its own registry, so several apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Row counts are powers of two up to a large batch; latencies span a tiny model's milliseconds to a CPU model's
# seconds.
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("softprompt_request_latency_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("softprompt_batch_rows", "model rows per batch (inputs x choices x prompts)",
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_requests = Histogram("softprompt_batch_requests", "requests gathered into one batch",
                                        buckets=ROW_BUCKETS, registry=r)
        self.batch_tasks = Histogram("softprompt_batch_tasks", "distinct tasks in one batch", buckets=ROW_BUCKETS,
                                     registry=r)
        self.batch_seconds = Histogram("softprompt_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.queue_rows = Gauge("softprompt_queue_rows", "rows waiting for the model", registry=r)
        self.queue_requests = Gauge("softprompt_queue_requests", "requests waiting for the model", registry=r)
        self.tasks = Gauge("softprompt_tasks", "tasks being served", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
