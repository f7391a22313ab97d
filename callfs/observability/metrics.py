"""Prometheus metrics. Counters on the hot path are plain integers read at scrape time: a
prometheus_client Counter takes a lock per increment, which the hot path cannot afford."""
from prometheus_client.core import CounterMetricFamily


class AttributeCounter:
    """A collector exposing `getattr(source, attribute)` as a counter."""

    def __init__(self, name: str, documentation: str, source, attribute: str):
        self.name = name
        self.documentation = documentation
        self.source = source
        self.attribute = attribute

    def collect(self):
        yield CounterMetricFamily(self.name, self.documentation,
                                  value=getattr(self.source, self.attribute))

    def describe(self):
        yield CounterMetricFamily(self.name, self.documentation)
