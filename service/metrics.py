"""Prometheus metrics of the service, on a registry of its own (one per app).

Names follow the Prometheus conventions: a `inspect_` prefix, base units in the name
(`_seconds`), `_total` for counters, `_info` for constant labels. Labels with user-given values
(namespace, class) come only from prompts an admin registered, so their cardinality is bounded
by what the QA engineers teach.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.4,
    0.6,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
STAGES = ("decode", "queue", "preprocess", "inference", "postprocess", "anomaly", "encode")


class Metrics:
    """Every metric the service exports; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inspect_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inspect_http_request_duration_seconds",
            "Time from request start to the response, by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "inspect_stage_duration_seconds",
            "Time per processing stage of an inspection or registration "
            "(decode, queue, preprocess, inference, postprocess, anomaly, encode).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "inspect_queue_depth",
            "Inspections waiting for the model (not counting the batch being run).",
            registry=r,
        )
        self.queue_capacity = Gauge(
            "inspect_queue_capacity",
            "Size of the inspection queue (INSPECT_QUEUE_SIZE).",
            registry=r,
        )
        self.max_batch = Gauge(
            "inspect_max_batch_size",
            "Largest batch per model call in use (INSPECT_MAX_BATCH_SIZE, or what the start-up "
            "calibration found fastest below it).",
            registry=r,
        )
        self.batch_size = Histogram(
            "inspect_batch_size",
            "Images per model call.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256),
            registry=r,
        )
        self.detections = Counter(
            "inspect_detections",
            "Detections returned, by namespace and class.",
            ["namespace", "class_name"],
            registry=r,
        )
        self.verdicts = Counter(
            "inspect_verdicts",
            "Inspection verdicts, by namespace and verdict (pass or reject).",
            ["namespace", "verdict"],
            registry=r,
        )
        self.store_version = Gauge(
            "inspect_prompt_store_version",
            "Prompt-store version of the prototypes in use, by namespace.",
            ["namespace"],
            registry=r,
        )
        self.store_classes = Gauge(
            "inspect_prompt_store_classes",
            "Defect classes in the prototypes in use, by namespace.",
            ["namespace"],
            registry=r,
        )
        self.store_up = Gauge(
            "inspect_prompt_store_up",
            "1 while the prompt store (Redis) answers, 0 during an outage (inspections then use "
            "the last prototypes held in memory).",
            registry=r,
        )
        self.degraded_inspections = Counter(
            "inspect_degraded_inspections",
            "Inspections answered from cached prototypes while the prompt store was unreachable.",
            registry=r,
        )
        self.errors = Counter(
            "inspect_errors",
            "Refused or failed requests, by problem type.",
            ["type"],
            registry=r,
        )
        self.anomaly_memory_bytes = Gauge(
            "inspect_anomaly_memory_bytes",
            "Bytes held by the anomaly mode's per-namespace memories of normal appearance.",
            registry=r,
        )
        self.anomaly_namespaces = Gauge(
            "inspect_anomaly_namespaces",
            "Namespaces whose anomaly memory is held (at most INSPECT_ANOMALY_MAX_NAMESPACES).",
            registry=r,
        )
        self.backend = Info(
            "inspect_backend", "Inference backend in use and the device it runs on.", registry=r
        )
        self.model = Info(
            "inspect_model",
            "Model in use: fingerprint, input size, embedding dimension, threshold.",
            registry=r,
        )

    def render(self) -> bytes:
        """Text exposition format of the registry."""
        return generate_latest(self.registry)
