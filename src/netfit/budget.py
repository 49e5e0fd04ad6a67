"""Budgets: what a fitted network may cost.

A budget is parsed from a short string and resolved against the seed network:

    "300M" / "300M macs"   absolute MACs            "0.6G flops"   = 0.3G MACs (FLOPs = 2 x MACs)
    "1.2M params"          absolute parameters      "50%" / "50% macs" / "50% params"   relative to the seed
    "2ms latency"          median latency, torch on CPU ("2ms latency@cuda", "2ms latency@ort-cpu")
    "20MB memory"          peak inference memory (MB = 10^6 bytes, MiB = 2^20 bytes)

Example:
    >>> Budget.parse("50%").resolve(seed_value=1_000_000)
    500000.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BudgetError, BudgetInfeasibleError

METRICS = ("macs", "params", "latency_ms", "memory_bytes")

_METRIC_WORDS = {
    "mac": "macs",
    "macs": "macs",
    "flop": "flops",
    "flops": "flops",
    "param": "params",
    "params": "params",
    "parameters": "params",
    "latency": "latency_ms",
    "lat": "latency_ms",
    "memory": "memory_bytes",
    "mem": "memory_bytes",
}
_COUNT_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "b": 1e9}
_BYTE_SCALE = {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_TIME_SCALE = {"ms": 1.0, "us": 1e-3, "s": 1e3}
# Where latency is measured: the suffix after "@".
LATENCY_TARGETS = {"cpu": ("cpu", "torch"), "ort-cpu": ("cpu", "onnxruntime"), "cuda": ("cuda", "torch")}

_PATTERN = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?P<unit>[a-z%]*)\s*(?P<word>[a-z_]*)\s*$")

_HELP = (
    'write e.g. "50%", "50% params", "300M macs", "0.6G flops", "1.2M params", "2ms latency", '
    '"2ms latency@ort-cpu" or "20MB memory"'
)


@dataclass(frozen=True)
class Budget:
    """A parsed budget.

    Attributes:
        spec: the string as given.
        metric: one of ``METRICS``.
        value: the absolute limit in the metric's unit, or the fraction of the seed when ``relative``.
        relative: whether ``value`` is a fraction of the seed's cost.
        device: where latency/memory is measured ("cpu" or "cuda").
        backend: latency backend ("torch" or "onnxruntime").
    """

    spec: str
    metric: str
    value: float
    relative: bool
    device: str = "cpu"
    backend: str = "torch"

    @classmethod
    def parse(cls, spec: str) -> Budget:
        """Parse a budget string; raises ``BudgetError`` with an example of the accepted forms."""
        text = spec.strip().lower()
        target = None
        if "@" in text:
            text, target = (part.strip() for part in text.split("@", 1))
        match = _PATTERN.match(text)
        if not match:
            raise BudgetError(f"cannot read budget {spec!r}; {_HELP}")
        value = float(match["num"])
        unit, word = match["unit"], match["word"]
        known_units = {"%", *_COUNT_SCALE, *_BYTE_SCALE, *_TIME_SCALE}
        if not word and unit not in known_units:  # "300flops" or "5 bananas": the letters name the metric
            unit, word = "", unit
        if word and word not in _METRIC_WORDS:
            raise BudgetError(f"unknown budget metric {word!r} in {spec!r}; use macs, flops, params, latency or memory")
        metric = _METRIC_WORDS.get(word, "")
        if value <= 0:
            raise BudgetError(f"budget {spec!r} must be positive")
        if unit == "%":
            return cls._relative(spec, value / 100, metric or "macs", target)
        if not metric:  # a bare number or a unit alone implies the metric
            metric = "latency_ms" if unit in _TIME_SCALE else "memory_bytes" if unit in _BYTE_SCALE else "macs"
        if metric in ("macs", "flops", "params"):
            if unit not in _COUNT_SCALE:
                raise BudgetError(f"unknown unit {unit!r} for {word or 'macs'} in {spec!r}; use K, M, G or T")
            value *= _COUNT_SCALE[unit] / (2 if metric == "flops" else 1)
            metric = "macs" if metric == "flops" else metric
        elif metric == "latency_ms":
            if unit not in _TIME_SCALE:
                raise BudgetError(f"unknown latency unit {unit!r} in {spec!r}; use ms, us or s")
            value *= _TIME_SCALE[unit]
        elif unit not in _BYTE_SCALE:
            raise BudgetError(f"unknown memory unit {unit!r} in {spec!r}; use KB, MB, GB, KiB, MiB or GiB")
        else:
            value *= _BYTE_SCALE[unit]
        device, backend = _latency_target(spec, target, metric)
        return cls(spec, metric, value, False, device, backend)

    @classmethod
    def _relative(cls, spec: str, fraction: float, metric: str, target: str | None) -> Budget:
        metric = "macs" if metric == "flops" else metric
        device, backend = _latency_target(spec, target, metric)
        return cls(spec, metric, fraction, True, device, backend)

    def resolve(self, seed_value: float) -> float:
        """The absolute limit, given the seed network's value of ``metric``."""
        return self.value * seed_value if self.relative else self.value

    def describe(self, limit: float) -> dict:
        """The ``budget`` entry of result.json."""
        return {"spec": self.spec, "metric": self.metric, "limit": float(limit)}


def _latency_target(spec: str, target: str | None, metric: str) -> tuple[str, str]:
    if target is None:
        return "cpu", "torch"
    if metric not in ("latency_ms", "memory_bytes"):
        raise BudgetError(f"'@{target}' in {spec!r} only applies to latency and memory budgets")
    if target not in LATENCY_TARGETS:
        raise BudgetError(f"unknown device {target!r} in {spec!r}; use one of: {', '.join(LATENCY_TARGETS)}")
    device, backend = LATENCY_TARGETS[target]
    if metric == "memory_bytes" and backend != "torch":
        raise BudgetError(f"memory is measured with torch; use @cpu or @cuda in {spec!r}")
    return device, backend


def parse_budgets(specs: str | list[str]) -> list[Budget]:
    """Parse one budget or a comma-separated list ("25%,50%,75%"); all must share one metric and device."""
    parts = [s for s in (specs.split(",") if isinstance(specs, str) else specs) if s.strip()]
    if not parts:
        raise BudgetError(f"no budget given; {_HELP}")
    budgets = [Budget.parse(s) for s in parts]
    specs_seen = [b.spec for b in budgets]
    if len(set(specs_seen)) < len(specs_seen):
        raise BudgetError(f"budgets {specs!r} repeat a budget; give each budget once")
    if len({(b.metric, b.device, b.backend) for b in budgets}) > 1:
        raise BudgetError(f"budgets {specs!r} mix metrics or devices; give budgets of one metric per run")
    return budgets


def format_metric(value: float, metric: str) -> str:
    """Human form of a metric value: "1.23M macs", "2.50 ms", "20.0 MB"."""
    if metric == "latency_ms":
        return f"{value:.3g} ms"
    if metric == "memory_bytes":
        return f"{value / 1e6:.3g} MB"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix} {metric}"
    return f"{value:.0f} {metric}"


def check_feasible(budget: Budget, limit: float, smallest: float, largest: float | None = None) -> None:
    """Raise ``BudgetInfeasibleError`` when ``limit`` is below the smallest reachable network's cost."""
    if limit < smallest:
        upper = f" .. {format_metric(largest, budget.metric)}" if largest is not None else " and up"
        raise BudgetInfeasibleError(
            f"budget {budget.spec!r} ({format_metric(limit, budget.metric)}) is below the smallest network this "
            f"method can reach; the reachable range is {format_metric(smallest, budget.metric)}{upper}"
        )
