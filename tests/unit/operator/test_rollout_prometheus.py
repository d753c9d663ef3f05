"""The Prometheus provider against a local fake Prometheus: per-guide selectors, the canary's
load failures, the operator's allow-list of addresses, and what is reflected from answers."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from shopping_guide_operator import __main__ as entry
from shopping_guide_operator import prometheus_provider as prom
from shopping_guide_operator import rollout
from shopping_guide_operator.prometheus_provider import (
    AddressNotAllowedError,
    AllowList,
    GuardedResolver,
    MeasurementError,
    PrometheusProvider,
)
from shopping_guide_operator.spec import Guide

from .conftest import BASE

Answer = Callable[[str], tuple[int, Any]]


def vector(*samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    result = [{"metric": labels, "value": [1.0, str(value)]} for labels, value in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@dataclass
class FakePrometheus:
    """`/api/v1/query` on 127.0.0.1; `answer` maps the PromQL to (HTTP status, body)."""

    answer: Answer = lambda promql: (200, vector())
    queries: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    state = FakePrometheus()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            state.paths.append(url.path)
            promql = urllib.parse.parse_qs(url.query).get("query", [""])[0]
            state.queries.append(promql)
            if url.path != "/api/v1/query":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                self.end_headers()
                return
            code, body = state.answer(promql)
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


LOCAL = AllowList.parse(["http://127.0.0.1:*"])


def guide(name: str, address: str, selector: dict[str, str] | None = None) -> Guide:
    body = copy.deepcopy(BASE)
    body["metadata"]["name"] = name
    prometheus: dict[str, Any] = {"address": address}
    if selector is not None:
        prometheus["selector"] = selector
    body["spec"]["rollout"] = {"steps": [{"weight": 10}], "analysis": {"prometheus": prometheus}}
    return Guide.parse(body)


@pytest.fixture
def allow_local() -> Iterator[None]:
    before = prom.configured()
    prom.configure(LOCAL)
    yield
    prom.configure(before)


# --- 3. one guide's metrics, not its neighbour's -------------------------------------------


def test_two_guides_in_one_namespace_see_only_their_own_pods(
    fake: FakePrometheus, allow_local: None
) -> None:
    pods = {"storefront": [7, 7], "outlet": [3, 4]}

    def answer(promql: str) -> tuple[int, Any]:
        mine = [g for g in pods if f'guide="{g}"' in promql] or list(pods)
        lowest = min(v for g in mine for v in pods[g])
        return 200, vector(({}, lowest))

    fake.answer = answer
    storefront = rollout.prometheus_provider(guide("storefront", fake.address))
    outlet = rollout.prometheus_provider(guide("outlet", fake.address))
    assert storefront is not None and outlet is not None
    assert asyncio.run(storefront.generation_applied()) == 7
    assert asyncio.run(outlet.generation_applied()) == 3
    assert fake.queries == [
        'min(shopping_guide_routing_generation{guide="storefront",namespace="shop"})',
        'min(shopping_guide_routing_generation{guide="outlet",namespace="shop"})',
    ]
    asyncio.run(outlet.measure("v2", 60))
    assert all('guide="outlet",' in q and 'namespace="shop"' in q for q in fake.queries[2:])


def test_an_explicit_selector_replaces_the_default(fake: FakePrometheus, allow_local: None) -> None:
    provider = rollout.prometheus_provider(
        guide("storefront", fake.address, {"kubernetes_namespace": "shop", "app": "sf"})
    )
    assert provider is not None
    asyncio.run(provider.generation_applied())
    assert fake.queries == [
        'min(shopping_guide_routing_generation{app="sf",kubernetes_namespace="shop"})'
    ]


# --- 4. a canary the serving pods could not load -------------------------------------------


def test_load_failure_of_the_canary_version_with_the_pods_reasons(
    fake: FakePrometheus, allow_local: None
) -> None:
    def answer(promql: str) -> tuple[int, Any]:
        if "shopping_guide_model_load_failed" not in promql:
            return 200, vector()
        if 'model_version="v2"' not in promql:
            return 200, vector()
        return 200, vector(({"reason": "out of memory"}, 2), ({"reason": "x" * 400}, 1))

    fake.answer = answer
    provider = rollout.prometheus_provider(guide("storefront", fake.address))
    assert provider is not None
    assert asyncio.run(provider.load_failure("v1")) is None
    failure = asyncio.run(provider.load_failure("v2"))
    assert failure is not None and failure.startswith("out of memory (2 pods); xxx")
    assert len(failure) <= 300
    assert fake.queries[-1] == prom.load_failure_query(
        "v2", {"namespace": "shop", "guide": "storefront"}
    )
    assert fake.queries[-1] == (
        "count by (reason) (shopping_guide_model_load_failed"
        '{guide="storefront",model_version="v2",namespace="shop"} == 1)'
    )


# --- 5. the operator's allow-list of Prometheus addresses ----------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("http://prometheus.monitoring.svc:9090", True),
        ("http://prometheus.monitoring.svc", True),
        ("https://prometheus.monitoring.svc.cluster.local:9091/prom", True),
        ("http://prometheus.monitoring:9090", False),  # not a fully named service
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://198.18.0.7:9090", False),
        ("http://prometheus.example.com", False),
        ("http://prometheus.svc.example.com", False),
        ("http://prometheus.monitoring.svc@evil.example.com:9090", False),
        ("http://prometheus.monitoring.svc:9090/x/../y", False),
        ("http://prometheus.monitoring.svc:9090/?query=up", False),
        ("ftp://prometheus.monitoring.svc", False),
    ],
)
def test_the_default_allow_list_is_in_cluster_services_only(address: str, allowed: bool) -> None:
    assert AllowList.default().allows(address) is allowed


def test_allow_list_entries_match_scheme_host_port_and_path_prefix() -> None:
    allowed = AllowList.parse(
        ["http://198.19.0.1:*", "https://prom.example.com/team-a", "http://*.mon.internal:9090"]
    )
    assert allowed.allows("http://198.19.0.1:40123")
    assert allowed.allows("http://198.19.0.1")
    assert not allowed.allows("https://198.19.0.1:40123")  # another scheme
    assert not allowed.allows("http://198.19.0.10:40123")
    assert allowed.allows("https://prom.example.com/team-a")
    assert allowed.allows("https://prom.example.com:443/team-a/")
    assert allowed.allows("https://prom.example.com/team-a/sub")
    assert not allowed.allows("https://prom.example.com/team-ab")  # prefix by path segment
    assert not allowed.allows("https://prom.example.com:8443/team-a")  # the default port only
    assert not allowed.allows("https://prom.example.com/")
    assert allowed.allows("http://a.b.mon.internal:9090")
    assert not allowed.allows("http://mon.internal:9090")
    assert not allowed.allows("http://a.mon.internal:9091")
    assert not allowed.allows("http://a.mon.internal.evil:9090")


@pytest.mark.parametrize(
    "entry", ["", "*", "198.19.0.1:9090", "ftp://host", "http://", "http://a?b", "http://u@h"]
)
def test_allow_list_entries_that_are_not_address_prefixes_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed Prometheus address"):
        AllowList.parse([entry])


def test_an_address_outside_the_allow_list_gets_no_query_at_all(fake: FakePrometheus) -> None:
    provider = PrometheusProvider(
        fake.address, {"namespace": "shop"}, allowed=AllowList.parse(["http://198.18.0.1:9090"])
    )
    for call in (
        provider.generation_applied(),
        provider.measure("v2", 60),
        provider.load_failure("v2"),
    ):
        with pytest.raises(AddressNotAllowedError, match="not allowed by the operator's config"):
            asyncio.run(call)
    assert fake.queries == []


class StubResolver(AbstractResolver):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": h, "port": port, "family": family, "proto": 0, "flags": 0}
            for h in self.hosts
        ]

    async def close(self) -> None:
        pass


def test_a_service_name_resolving_to_the_metadata_endpoint_is_not_connected() -> None:
    # An ExternalName Service `x.team.svc` may point anywhere, e.g. at 169.254.169.254.
    for hosts in (("169.254.169.254",), ("fe80::1",), ("::ffff:169.254.169.254",),
                  ("fd00:ec2::254",), ("0.0.0.0",)):  # fmt: skip
        with pytest.raises(OSError, match="resolves to no address the operator may query"):
            asyncio.run(GuardedResolver(StubResolver(*hosts)).resolve("x.team.svc", 80))
    mixed = GuardedResolver(StubResolver("169.254.169.254", "198.18.128.12"))
    assert [r["host"] for r in asyncio.run(mixed.resolve("prometheus.monitoring.svc"))] == [
        "198.18.128.12"
    ]


def test_the_operator_takes_its_allow_list_from_the_cli_or_the_environment() -> None:
    env = {entry.ENV_ALLOWED_ADDRESSES: "http://198.19.0.1:*, https://prom.example.com/a"}
    from_env = entry.parse_args([], environ=env).prometheus_allowed
    assert from_env.allows("http://198.19.0.1:41000")
    assert from_env.allows("https://prom.example.com/a")
    assert not from_env.allows("http://prometheus.monitoring.svc:9090")
    cli = entry.parse_args(
        ["--prometheus-allowed-address", "http://127.0.0.1:*"], environ=env
    ).prometheus_allowed
    assert cli.allows("http://127.0.0.1:9") and not cli.allows("http://198.19.0.1:41000")
    default = entry.parse_args([], environ={}).prometheus_allowed
    assert default == AllowList.default()
    with pytest.raises(SystemExit):
        entry.parse_args(["--prometheus-allowed-address", "198.19.0.1:9090"], environ={})


def test_the_chart_passes_its_allow_list_to_the_operator() -> None:
    from tests.unit.test_chart import render

    def args(*values: str) -> list[str]:
        (deployment,) = [d for d in render(*values) if d["kind"] == "Deployment"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return [a for a in container["args"] if a.startswith("--prometheus-allowed-address")]

    assert args() == []  # the operator's default: in-cluster services
    assert args("prometheus.allowedAddresses={http://198.19.0.1:*,https://p.example.com/a}") == [
        "--prometheus-allowed-address=http://198.19.0.1:*",
        "--prometheus-allowed-address=https://p.example.com/a",
    ]


def test_redirects_are_not_followed(fake: FakePrometheus) -> None:
    provider = PrometheusProvider(f"{fake.address}/moved", {"namespace": "shop"}, allowed=LOCAL)
    with pytest.raises(MeasurementError):
        asyncio.run(provider.generation_applied())
    assert fake.paths == ["/moved/api/v1/query"]


# --- 5. label names, and what is reflected into status and Events --------------------------


@pytest.mark.parametrize("name", ["bad-key", "1abc", 'a"}or{b="', "", "ä"])
def test_selector_keys_must_be_prometheus_label_names(fake: FakePrometheus, name: str) -> None:
    provider = PrometheusProvider(fake.address, {name: "x"}, allowed=LOCAL)
    with pytest.raises(MeasurementError, match="not a Prometheus label name"):
        asyncio.run(provider.generation_applied())
    assert fake.queries == []
    with pytest.raises(ValueError, match="not a Prometheus label name"):
        prom.queries("v2", 60, {name: "x"})


def test_selector_values_are_escaped() -> None:
    got = prom.queries("v2", 60, {"namespace": 'a"b\\c\nd'})
    assert 'namespace="a\\"b\\\\c\\nd"' in got["requests"]


def test_reflected_text_is_cut_to_300_characters(fake: FakePrometheus) -> None:
    fake.answer = lambda promql: (500, {"status": "error", "error": "e" * 5000})
    provider = PrometheusProvider(fake.address, {"namespace": "shop"}, allowed=LOCAL)
    with pytest.raises(MeasurementError) as caught:
        asyncio.run(provider.generation_applied())
    assert len(str(caught.value)) <= 300 and "eeee" in str(caught.value)
    fake.answer = lambda promql: (502, "<html>" + "b" * 5000 + "</html>")
    with pytest.raises(MeasurementError) as caught:
        asyncio.run(provider.generation_applied())
    assert len(str(caught.value)) <= 300
    with pytest.raises(MeasurementError) as caught:
        prom.scalar({"status": "success", "data": {"result": [{"value": "v" * 5000}]}})
    assert len(str(caught.value)) <= 300


def test_host_names_are_resolved_through_the_guard(fake: FakePrometheus) -> None:
    fake.answer = lambda promql: (200, vector(({}, 4)))
    named = PrometheusProvider(
        f"http://localhost:{fake.port}",
        {"namespace": "shop"},
        allowed=AllowList.parse(["http://localhost:*"]),
    )
    assert asyncio.run(named.generation_applied()) == 4
