import pytest

from netfit.budget import Budget, check_feasible, format_metric, parse_budgets
from netfit.errors import BudgetError, BudgetInfeasibleError


@pytest.mark.parametrize(
    ("spec", "metric", "value", "relative"),
    [
        ("300M", "macs", 300e6, False),
        ("300M macs", "macs", 300e6, False),
        ("300macs", "macs", 300.0, False),
        ("0.6G flops", "macs", 0.3e9, False),
        ("1.2M params", "params", 1.2e6, False),
        ("50%", "macs", 0.5, True),
        ("50% params", "params", 0.5, True),
        ("50% flops", "macs", 0.5, True),
        ("150%", "macs", 1.5, True),
        ("2ms latency", "latency_ms", 2.0, False),
        ("500us latency", "latency_ms", 0.5, False),
        ("20MB memory", "memory_bytes", 20e6, False),
        ("1MiB memory", "memory_bytes", 2**20, False),
        ("2e6 MACs", "macs", 2e6, False),
    ],
)
def test_parse(spec, metric, value, relative):
    b = Budget.parse(spec)
    assert (b.metric, b.relative) == (metric, relative)
    assert b.value == pytest.approx(value)
    assert b.spec == spec


def test_latency_device():
    b = Budget.parse("2ms latency@ort-cpu")
    assert (b.device, b.backend) == ("cpu", "onnxruntime")
    assert Budget.parse("3ms latency@cuda").device == "cuda"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "cannot read budget"),
        ("fast", "cannot read budget"),
        ("-5M", "cannot read budget"),
        ("0%", "must be positive"),
        ("0 macs", "must be positive"),
        ("3M bananas", "unknown budget metric 'bananas'"),
        ("3X macs", "unknown unit 'x'"),
        ("3kg latency", "unknown latency unit"),
        ("3Q memory", "unknown memory unit"),
        ("3M macs@cuda", "only applies to latency and memory"),
        ("2ms latency@tpu", "unknown device 'tpu'"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(BudgetError, match=message):
        Budget.parse(spec)


def test_resolve_and_describe():
    assert Budget.parse("25%").resolve(4_000_000) == 1_000_000
    assert Budget.parse("3M").resolve(123) == 3e6
    assert Budget.parse("50%").describe(5.0) == {"spec": "50%", "metric": "macs", "limit": 5.0}


def test_parse_many():
    budgets = parse_budgets("25%, 50%,75%")
    assert [b.value for b in budgets] == [0.25, 0.5, 0.75]
    with pytest.raises(BudgetError, match="mix metrics"):
        parse_budgets("50%,1M params")
    with pytest.raises(BudgetError, match="no budget"):
        parse_budgets(" , ")


def test_infeasible_names_range():
    b = Budget.parse("1K macs")
    with pytest.raises(BudgetInfeasibleError, match=r"reachable range is 2.5M macs .. 40M macs"):
        check_feasible(b, 1e3, 2.5e6, 40e6)
    check_feasible(b, 3e6, 2.5e6, 40e6)  # fits: no error


def test_format_metric():
    assert format_metric(1.5e9, "macs") == "1.5G macs"
    assert format_metric(2.25, "latency_ms") == "2.25 ms"
    assert format_metric(2e7, "memory_bytes") == "20 MB"
