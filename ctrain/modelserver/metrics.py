"""Prometheus metrics on a registry owned by the server (nothing global).

Two families:

* ``ctrain_modelserver_*``: requests and latency by model, version, api, protocol and
  status code, plus gauges of loaded versions.
* TF Serving's own names, so dashboards written against tensorflow/serving work here:
  ``:tensorflow:serving:request_count{model_name,status}`` (counter) and
  ``:tensorflow:serving:request_latency{model_name,API,entrypoint}`` (histogram, us).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "ctrain_modelserver_"
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
# TF Serving: ExponentialBuckets(10, 1.8, 33) microseconds.
TFS_LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
TFS_REQUEST_COUNT = ":tensorflow:serving:request_count"


class _LoadedVersions(Collector):
    def __init__(self, view: Callable[[], dict[str, list[int]]]) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        loaded = self._view()
        count = GaugeMetricFamily(
            PREFIX + "loaded_versions", "Versions AVAILABLE per model", labels=["model"]
        )
        each = GaugeMetricFamily(
            PREFIX + "version_loaded", "1 per AVAILABLE version", labels=["model", "version"]
        )
        for model, versions in sorted(loaded.items()):
            count.add_metric([model], len(versions))
            for v in versions:
                each.add_metric([model, str(v)], 1)
        yield count
        yield each


class Metrics:
    def __init__(self, loaded_versions: Callable[[], dict[str, list[int]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            PREFIX + "requests",
            "Inference and metadata requests",
            ["model", "version", "api", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            PREFIX + "request_latency_seconds",
            "Request latency inside the server",
            ["model", "version", "api", "protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tfs_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=TFS_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self.registry.register(_LoadedVersions(loaded_versions))
        self._lock = threading.Lock()
        self._tfs_counts: dict[tuple[str, str], int] = {}

    def observe(
        self, model: str, version: str, api: str, protocol: str, code: str, seconds: float
    ) -> None:
        self.requests.labels(model, version, api, protocol, code).inc()
        self.latency.labels(model, version, api, protocol).observe(seconds)
        if api in ("predict", "classify", "regress", "multi_inference"):
            self.tfs_latency.labels(model, api, protocol.upper()).observe(seconds * 1e6)
            with self._lock:
                key = (model, code)
                self._tfs_counts[key] = self._tfs_counts.get(key, 0) + 1

    def render(self) -> bytes:
        # TF Serving exports the counter without the ``_total`` suffix prometheus_client
        # would force, so this one family is written by hand.
        lines = [
            f"# HELP {TFS_REQUEST_COUNT} The total number of requests.",
            f"# TYPE {TFS_REQUEST_COUNT} counter",
        ]
        with self._lock:
            for (model, status), n in sorted(self._tfs_counts.items()):
                lines.append(
                    f'{TFS_REQUEST_COUNT}{{model_name="{_esc(model)}",status="{status}"}} {n}'
                )
        return generate_latest(self.registry) + ("\n".join(lines) + "\n").encode()


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
