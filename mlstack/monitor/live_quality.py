"""The served versions' live quality where Prometheus reads it: a ``/metrics`` endpoint.

Why an endpoint of its own: no Pushgateway or node-exporter textfile collector is deployed here,
and Prometheus only scrapes (``manifests/base/podmonitor.yaml``: the predictors' ``/metrics``).
Live quality changes only when labels arrive, so ``mlstack labels add`` computes it once and
writes ``live-quality.json`` into the label store (``mlstack.monitor.labels.write_quality``); this
exporter reads that file at every scrape (nothing cached: a new file is served at the next
scrape) and turns each version's figures into gauges:

- ``model_live_roc_auc{model_name, model_version, namespace}``: only when computed (enough labels,
  both classes); a version with too few labels has no sample, so no alert fires on it;
- ``model_live_f1{...}``: f1 at the model's own threshold (the captured ``prediction``), likewise;
- ``model_live_labelled_predictions{...}``: the labelled predictions in the window, always;
- ``model_live_quality_window_end_seconds{...}``: when the newest labelled prediction was
  received (how old the figures are).

In the cluster the payload sink serves these series (``mlstack.monitor.sink``): each namespace's
sink exports its own namespace's rows without a ``namespace`` label, which its PodMonitor target
adds, like every other series of the namespace. This exporter, for a store read from elsewhere
(a laptop, a test), serves every environment's rows labelled ``namespace`` (the environment the
captures were made in), so its scrape config must keep the exporter's labels
(``honor_labels: true``) or Prometheus renames it ``exported_namespace``.

``python -m mlstack.monitor.live_quality --store DIR [--host H] [--port P]`` serves it until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlstack.errors import StackError, exit_on_error
from mlstack.monitor.labels import VersionQuality, read_quality

LABELS = ["model_name", "model_version", "namespace"]
DEFAULT_PORT = 9108


def families(
    qualities: Iterable[VersionQuality], *, with_namespace: bool = True
) -> list[GaugeMetricFamily]:
    """The four gauge families of ``qualities``, labelled ``LABELS``; without the ``namespace``
    label when ``with_namespace`` is false (the payload sink: its scrape target's namespace is
    the label, as for every other series of the namespace)."""
    names = LABELS if with_namespace else LABELS[:-1]
    roc = GaugeMetricFamily(
        "model_live_roc_auc",
        "ROC AUC of the version's labelled predictions in the labelled window",
        labels=names,
    )
    f1 = GaugeMetricFamily(
        "model_live_f1",
        "F1 at the model's threshold of the version's labelled predictions in the window",
        labels=names,
    )
    count = GaugeMetricFamily(
        "model_live_labelled_predictions",
        "Labelled predictions of the version in the labelled window",
        labels=names,
    )
    end = GaugeMetricFamily(
        "model_live_quality_window_end_seconds",
        "When the newest labelled prediction of the window was received (Unix time)",
        labels=names,
    )
    for q in qualities:
        values = [q.model_name, q.model_version, q.environment][: len(names)]
        count.add_metric(values, float(q.labelled))
        end.add_metric(values, datetime.fromisoformat(q.window_end).timestamp())
        if q.roc_auc is not None:
            roc.add_metric(values, q.roc_auc)
        if q.f1 is not None:
            f1.add_metric(values, q.f1)
    return [roc, f1, count, end]


class LiveQualityCollector(Collector):
    """Gauges from the label store's ``live-quality.json``, read at every ``collect``."""

    def __init__(self, store: str | Path) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            qualities = read_quality(self.store)
        except StackError:
            qualities = []  # a torn or foreign file: no samples rather than wrong ones
        yield from families(qualities)


def registry(store: str | Path) -> CollectorRegistry:
    """A registry holding only the live-quality collector of ``store``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LiveQualityCollector(store))
    return reg


def main(argv: list[str] | None = None) -> None:
    """Serve ``/metrics`` for ``--store`` until SIGTERM or SIGINT (exit 0)."""
    parser = argparse.ArgumentParser(prog="python -m mlstack.monitor.live_quality")
    parser.add_argument(
        "--store", required=True, help="the label store: a directory or an s3:// URL"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    args = parser.parse_args(argv)
    with exit_on_error():
        try:
            server, thread = start_http_server(args.port, args.host, registry(args.store))
        except OSError as exc:
            raise StackError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        print(f"serving live quality of {args.store} on {args.host}:{args.port}", flush=True)
        stop.wait()
        server.shutdown()
        thread.join(timeout=5)


if __name__ == "__main__":
    main()
