"""Scenario results, their targets, the printed tables and the JSON file.

A scenario's figures are kept per server (ours, Orthanc, the bare-ASGI ceiling); its verdict
combines the issue's targets: a minimum ratio to Orthanc, never slower than Orthanc, absolute
limits (p99 latency, memory growth), and no error or wrong answer on our side.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import LoadResult
from .servers import CEILING, ORTHANC_NAME, OURS

MB = 1e6


@dataclass
class Figures:
    """One server's figures in one scenario."""

    value: float
    requests: int = 0
    seconds: float = 0.0
    concurrency: int = 0
    req_s: float = 0.0
    mb_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    errors: int = 0
    wrong: int = 0
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    stopped: str | None = None
    #: Server CPU (user + system, all processes) per request: steadier than rates on a
    #: shared machine, since it counts the server's work rather than its share of the CPUs.
    cpu_ms_per_request: float = float("nan")

    @property
    def growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_start_mb

    @classmethod
    def of(
        cls, load: LoadResult, value: float, memory: tuple[int, int], *, sent: bool = False
    ) -> Figures:
        return cls(
            value=value,
            requests=load.requests,
            seconds=load.seconds,
            concurrency=load.concurrency,
            req_s=load.rate,
            mb_s=load.mb_per_s(sent=sent),
            p50_ms=load.percentile_ms(0.5),
            p99_ms=load.percentile_ms(0.99),
            rss_start_mb=memory[0] / MB,
            rss_peak_mb=memory[1] / MB,
            errors=load.errors,
            wrong=load.wrong,
            checked=load.checked,
            problems=list(load.problems),
            stopped=load.stopped,
        )


@dataclass
class Scenario:
    """A scenario's figures per server and its targets."""

    key: str
    title: str
    unit: str
    figures: dict[str, Figures] = field(default_factory=dict)
    min_ratio: float | None = None
    max_p99_ms: float | None = None
    max_growth_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    #: Name in the summary table (the title when empty).
    short: str = ""
    #: Further targets by name ("last 10% >= 0.8x first 10%") and whether each was met.
    checks: dict[str, bool] = field(default_factory=dict)

    def ratio(self, other: str = ORTHANC_NAME) -> float | None:
        ours, theirs = self.figures.get(OURS), self.figures.get(other)
        if ours is None or theirs is None or not theirs.value:
            return None
        return ours.value / theirs.value

    def target_text(self) -> str:
        parts = []
        if self.min_ratio is not None and ORTHANC_NAME not in self.figures:
            # Without Orthanc the ratio cannot be judged: say so rather than let PASS imply it.
            parts.append(f">={self.min_ratio:g}x not judged")
        elif self.min_ratio is not None:
            parts.append(f">={self.min_ratio:g}x")
        elif ORTHANC_NAME in self.figures:
            parts.append(">=1x")
        if self.max_p99_ms is not None:
            parts.append(f"p99<{self.max_p99_ms:g}ms")
        if self.max_growth_mb is not None:
            parts.append(f"grow<{self.max_growth_mb:g}MB")
        parts += list(self.checks)
        return ", ".join(parts) or "-"

    def misses(self) -> list[str]:
        """Why this scenario misses its targets; empty when it passes."""
        ours = self.figures.get(OURS)
        if ours is None:
            return ["not run"]
        reasons = []
        ratio = self.ratio()
        if ratio is not None:
            wanted = self.min_ratio if self.min_ratio is not None else 1.0
            if ratio < wanted:
                reasons.append(f"ratio {ratio:.2f}x < {wanted:g}x")
            elif ratio < 1.0:
                reasons.append("slower than Orthanc")
        if self.max_p99_ms is not None and not ours.p99_ms < self.max_p99_ms:
            reasons.append(f"p99 {ours.p99_ms:.1f} ms")
        if self.max_growth_mb is not None and not ours.growth_mb < self.max_growth_mb:
            reasons.append(f"memory growth {ours.growth_mb:.0f} MB")
        reasons += [f"{name}: no" for name, met in self.checks.items() if not met]
        if ours.errors or ours.wrong:
            reasons.append(f"{ours.errors} errors, {ours.wrong} wrong answers")
        if ours.requests == 0:
            reasons.append("no successful request")
        return reasons

    def verdict(self) -> str:
        return "MISS" if self.misses() else "PASS"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def print_scenario(scenario: Scenario) -> None:
    """The detailed block of one scenario, printed as soon as it has run."""
    print(f"\n{scenario.title}")
    header = (
        f"  {'server':<16}{scenario.unit:>12}{'req/s':>10}{'MB/s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'cpu ms':>8}{'conc':>6}{'RSS MB':>8}{'grow MB':>9}{'err':>5}{'wrong':>6}"
        f"{'chk':>5}"
    )
    print(header)
    for name, fig in scenario.figures.items():
        print(
            f"  {name:<16}{_num(fig.value):>12}{_num(fig.req_s):>10}{_num(fig.mb_s):>9}"
            f"{_num(fig.p50_ms):>9}{_num(fig.p99_ms):>9}{_num(fig.cpu_ms_per_request, 2):>8}"
            f"{fig.concurrency:>6}"
            f"{fig.rss_peak_mb:>8.0f}{fig.growth_mb:>9.1f}{fig.errors:>5}{fig.wrong:>6}"
            f"{fig.checked:>5}"
        )
        for problem in fig.problems[:3]:
            print(f"    ! {problem}")
        if fig.stopped:
            print(f"    ! stopped early: {fig.stopped}")
    ratio = scenario.ratio()
    ceiling = scenario.ratio(CEILING)
    line = f"  ratio to Orthanc {_num(ratio, 2)}x" if ratio is not None else "  (no Orthanc)"
    if ceiling is not None:
        line += f"; {ceiling:.0%} of the bare-ASGI ceiling"
    misses = scenario.misses()
    line += f"; target {scenario.target_text()}: {scenario.verdict()}"
    if misses:
        line += f" ({'; '.join(misses)})"
    print(line)
    for note in scenario.notes:
        print(f"  note: {note}")


def print_summary(scenarios: list[Scenario], memory: dict[str, float], limit_mb: float) -> None:
    """One line per scenario: both figures, ratio, ceiling fraction, target, verdict."""
    print("\nSummary (figures from a shared 2-core machine: compare ratios within a run)")
    header = (
        f"{'scenario':<34}{'unit':<10}{'ours':>10}{'orthanc':>10}{'ratio':>9}"
        f"{'ceiling':>10}{'of ceil':>8}  {'target':<30}{'result':<6}"
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        ours = scenario.figures.get(OURS)
        theirs = scenario.figures.get(ORTHANC_NAME)
        ceiling = scenario.figures.get(CEILING)
        ratio = scenario.ratio()
        fraction = scenario.ratio(CEILING)
        print(
            f"{(scenario.short or scenario.title)[:33]:<34}{scenario.unit[:9]:<10}"
            f"{_num(ours.value if ours else None):>10}{_num(theirs.value if theirs else None):>10}"
            f"{(_num(ratio, 2) + 'x') if ratio is not None else '-':>9}"
            f"{_num(ceiling.value if ceiling else None):>10}"
            f"{f'{fraction:.0%}' if fraction is not None else '-':>8}"
            f"  {scenario.target_text():<30}{scenario.verdict():<6}"
        )
    peak = memory.get(OURS, 0.0)
    verdict = "PASS" if peak < limit_mb else "MISS"
    print(
        f"{'our server RSS, all processes, peak':<44}{peak:>10.0f} MB"
        f"   target < {limit_mb:.0f} MB throughout: {verdict}"
    )
    if ORTHANC_NAME in memory:
        print(f"{'Orthanc RSS peak':<44}{memory[ORTHANC_NAME]:>10.0f} MB")


def write_json(
    path: Path,
    scenarios: list[Scenario],
    memory: dict[str, float],
    context: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """All figures, verdicts and the run's context, for documentation to quote."""
    payload = {
        "context": context,
        "peak_rss_mb": memory,
        "scenarios": [
            {
                **asdict(scenario),
                "ratio_to_orthanc": scenario.ratio(),
                "fraction_of_ceiling": scenario.ratio(CEILING),
                "target": scenario.target_text(),
                "verdict": scenario.verdict(),
                "misses": scenario.misses(),
            }
            for scenario in scenarios
        ],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(payload), indent=2, default=str, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
