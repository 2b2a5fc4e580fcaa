"""Prometheus metrics, in a registry of the app's own (no module-global state)."""

from __future__ import annotations

from collections import Counter as PyCounter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Keystroke-to-frame spans 5 ms (a GPU at 1 step) to seconds (a busy CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2, 0.5, 1, 2)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompts = Counter("promptcast_prompts_received", "Prompt updates accepted", registry=r)
        self.rejected = Counter(
            "promptcast_messages_rejected", "Client messages answered with an error", ["code"],
            registry=r,
        )
        self.unchanged = Counter(
            "promptcast_prompts_unchanged",
            "Prompt updates identical to the session's newest request (no new render)",
            registry=r,
        )
        self.rendered = Counter("promptcast_frames_rendered", "Frames the engine rendered", registry=r)
        self.refines = Counter(
            "promptcast_refines_started", "Refine jobs submitted for idle sessions", registry=r
        )
        self.sent = Counter("promptcast_frames_sent", "Frames sent to clients", registry=r)
        self.engine_errors = Counter(
            "promptcast_engine_errors", "Renders that raised an exception", registry=r
        )
        self.latency = Histogram(
            "promptcast_keystroke_to_frame_seconds",
            "Server-side time from receiving a prompt to sending its frame",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage = Histogram(
            "promptcast_stage_seconds", "Time per stage of one frame", ["stage"],
            buckets=STAGE_BUCKETS, registry=r,
        )
        self.ready = Gauge("promptcast_ready", "1 once the model is loaded and warmed", registry=r)
        self.batch_size = Histogram(
            "promptcast_batch_size", "Jobs of different sessions rendered together as one batch",
            buckets=(1, 2, 4, 8, 16), registry=r,
        )
        self.start_delay = Histogram(
            "promptcast_engine_start_delay_seconds",
            "Per batch: how long the engine stood idle while the batch's first job waited (from "
            "the later of that job's arrival and the end of the last batch, to the start)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=r,
        )
        self.loop_lag = Histogram(
            "promptcast_event_loop_lag_seconds",
            "How late a 10 ms timer fired once ready: how long a stalled loop held up every client",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1), registry=r,
        )
        self.loop_lag_max = Gauge(
            "promptcast_event_loop_lag_max_seconds", "Longest event-loop stall seen", registry=r
        )

    def watch(self, source: Callable[[], dict[str, object]]) -> None:
        """Export counts that the core and engine keep themselves, read at scrape time."""
        self.registry.register(_Snapshot(source))


class _Snapshot(Collector):
    def __init__(self, source: Callable[[], dict[str, object]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snap = self._source()
        for name, help_text in (
            ("jobs_dropped", "Render jobs dropped before they ran, by reason"),
            ("frames_dropped", "Rendered frames dropped before they were sent, by reason"),
        ):
            family = CounterMetricFamily(f"promptcast_{name}", help_text, labels=["reason"])
            counts = snap[name]
            assert isinstance(counts, PyCounter)
            for reason, n in sorted(counts.items()):
                family.add_metric([reason], n)
            yield family
        for name, help_text in (
            ("prompt_cache_hits", "Prompt embeddings served from the cache"),
            ("prompt_cache_misses", "Prompt embeddings computed by the text encoder"),
        ):
            yield CounterMetricFamily(f"promptcast_{name}", help_text, value=_num(snap[name]))
        yield GaugeMetricFamily("promptcast_sessions", "Open sessions", value=_num(snap["sessions"]))
        yield GaugeMetricFamily("promptcast_webrtc_peers", "Sessions with a WebRTC peer connection",
                                value=_num(snap["video_peers"]))
        yield GaugeMetricFamily("promptcast_mjpeg_viewers", "Viewers of /stream.mjpg",
                                value=_num(snap["mjpeg_viewers"]))
        yield GaugeMetricFamily(
            "promptcast_jobs_pending", "Sessions with a job waiting", value=_num(snap["pending"])
        )


def _num(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)
