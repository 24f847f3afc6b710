"""Prometheus metrics for ``linx-otp run --metrics HOST:PORT``, served with ``prometheus_client``
(the optional extra ``linx-otp[metrics]``).

At each scrape the collector reads the tree's state (``TreeState.status`` and the supervisors'
give-up counts) and turns it into, per child, ``linx_otp_child_up``,
``linx_otp_child_restarts_total``, ``linx_otp_child_start_time_seconds`` and
``linx_otp_child_last_exit_info`` (the last exit in words as a label), and per supervisor
``linx_otp_supervisor_gave_up_total``. Nothing is kept between scrapes. This module starts one
HTTP server thread (prometheus_client's) and nothing else; it never changes the tree.

>>> parse_address("127.0.0.1:9100"), parse_address("[::1]:0")
(('127.0.0.1', 9100), ('::1', 0))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import LinxError, LinxValueError


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPV6]:PORT`` for an IPv6 address; port 0 picks a free one)."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LinxValueError(
            ("bad_metrics_address", text), f"--metrics takes HOST:PORT, like 127.0.0.1:9100, not {text!r}"
        )
    return host, int(port)


class _TreeCollector:
    def __init__(self, rows: Callable[[], list[dict[str, Any]]], gave_up: Callable[[], dict[str, int]]) -> None:
        self.rows, self.gave_up = rows, gave_up

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("linx_otp_child_up", "1 while the child runs, else 0", labels=["id", "kind"])
        restarts = CounterMetricFamily("linx_otp_child_restarts", "restarts since the daemon started", labels=["id"])
        started = GaugeMetricFamily(
            "linx_otp_child_start_time_seconds", "when the running incarnation started (unix time)", labels=["id"]
        )
        last_exit = GaugeMetricFamily(
            "linx_otp_child_last_exit_info", "how the child last ended, in words", labels=["id", "last_exit"]
        )
        for row in self.rows():
            up.add_metric([row["id"], row["kind"]], 1.0 if row["state"] == "running" else 0.0)
            restarts.add_metric([row["id"]], row["restarts"])
            if row["started_at_unix"] is not None:
                started.add_metric([row["id"]], row["started_at_unix"])
            if row["last_exit"] is not None:
                last_exit.add_metric([row["id"], row["last_exit"]], 1.0)
        gave_up = CounterMetricFamily(
            "linx_otp_supervisor_gave_up", "times a supervisor reached its restart intensity", labels=["id"]
        )
        for supervisor, count in self.gave_up().items():
            gave_up.add_metric([supervisor], count)
        yield from (up, restarts, started, last_exit, gave_up)


def serve(
    address: tuple[str, int], rows: Callable[[], list[dict[str, Any]]], gave_up: Callable[[], dict[str, int]]
) -> Any:
    """Serve the metrics at ``http://HOST:PORT/metrics``; returns the server (``server_address``,
    ``shutdown()``). Raises ``LinxError`` without the library or when the address can't be bound."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise LinxError(
            "no_metrics_library", "--metrics needs prometheus_client: pip install 'linx-otp[metrics]'"
        ) from None
    registry = CollectorRegistry()
    registry.register(_TreeCollector(rows, gave_up))
    try:
        server, _ = start_http_server(address[1], addr=address[0], registry=registry)
    except OSError as error:
        raise LinxError(
            ("metrics_address", address), f"--metrics {address[0]}:{address[1]}: {error.strerror or error}"
        ) from None
    return server
