"""Reading a ``/metrics`` answer in tests: samples by name and labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One exposition's samples: ``(name, sorted labels) -> value``."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it does not exist (yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, found), value in self.samples.items()
            if sample == name and wanted <= set(found)
        )

    def label_values(self, label: str) -> set[str]:
        return {value for _, found in self.samples for name, value in found if name == label}

    def requests(self, transaction: str, code: int) -> float:
        return self.value("dicomweb_http_requests_total", transaction=transaction, code=str(code))

    def observations(self, transaction: str) -> float:
        return self.value("dicomweb_http_request_duration_seconds_count", transaction=transaction)
