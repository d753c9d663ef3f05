"""PromQL text and answer parsing of the Prometheus provider (no server needed)."""

from __future__ import annotations

import pytest

from shopping_guide_operator.prometheus_provider import MeasurementError, queries, scalar


def test_queries_select_the_version_and_window() -> None:
    got = queries("v2", 60, {"namespace": "shop", "shoppingguide": 'odd"name'})
    assert got["requests"] == (
        'sum(increase(shopping_guide_requests_total{endpoint="recommendations",'
        'model_version="v2",namespace="shop",shoppingguide="odd\\"name"}[60s]))'
    )
    assert 'code=~"5.."' in got["errors"]
    assert got["p99_seconds"].startswith("histogram_quantile(0.99, sum by (le) (rate(")
    assert 'event="click"' in got["clicks"]
    assert 'event="cart"' in got["carts"] and 'event="purchase"' in got["purchases"]
    assert got["revenue"] == (
        'sum(increase(shopping_guide_revenue_total{model_version="v2",namespace="shop",'
        'shoppingguide="odd\\"name"}[60s]))'
    )


def test_scalar_answers() -> None:
    ok = {"status": "success", "data": {"result": [{"value": [1, "12.5"]}]}}
    assert scalar(ok) == 12.5
    assert scalar({"status": "success", "data": {"result": []}}) is None
    nan = {"status": "success", "data": {"result": [{"value": [1, "NaN"]}]}}
    assert scalar(nan) is None
    with pytest.raises(MeasurementError, match="bad_data"):
        scalar({"status": "error", "error": "bad_data"})
    with pytest.raises(MeasurementError, match="malformed"):
        scalar({"status": "success", "data": {"result": [{"value": "x"}]}})
