"""A small Prometheus registry: counters, gauges and histograms rendered in the text format
(https://prometheus.io/docs/instrumenting/exposition_formats/). Thread safe."""

import bisect
import threading

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(names, values) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


class _Metric:
    kind = ""

    def __init__(self, name, help_text, labels=()):
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.lock = threading.Lock()
        self.values = {}

    def header(self):
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help_text, labels=()):
        super().__init__(name, help_text, labels)
        if not labels:
            self.values[()] = 0.0

    def inc(self, amount=1.0, *labels):
        with self.lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self):
        with self.lock:
            items = sorted(self.values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name, help_text, read):
        super().__init__(name, help_text)
        self.read = read  # called at scrape time

    def render(self):
        return self.header() + [f"{self.name} {self.read():g}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets)

    def observe(self, value, *labels):
        with self.lock:
            counts, total = self.values.get(labels, ([0] * (len(self.buckets) + 1), 0.0))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self.values[labels] = (counts, total + value)

    def render(self):
        lines = self.header()
        with self.lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self.values.items())
        for labels, (counts, total) in items:
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), counts):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f"{self.name}_bucket{_labels((*self.label_names, 'le'), (*labels, le))} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {total:g}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {cumulative}")
        return lines


class Registry:
    def __init__(self):
        self.metrics = []

    def add(self, metric):
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"
