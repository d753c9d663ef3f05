"""Canary measurements from Prometheus, behind a small protocol.

Instant queries over the HTTP API (`/api/v1/query`) on the recommender's own metrics, per
model version, over one analysis window. Anything short of a clean answer (unreachable, slow,
an error status, a malformed body) raises `MeasurementError`, which the analysis turns into
an inconclusive verdict: no data never passes a canary.

The address comes from a guide, that is from whoever may edit one, and the operator's answers
end up in status and Events. So the operator queries only addresses its own configuration
allows (`AllowList`: scheme, host, port and path prefix; by default the cluster's services,
`*.svc` and `*.svc.cluster.local`), follows no redirect, connects to no link-local, multicast or
unspecified address a host name resolves to (an ExternalName Service may name any host, the
cloud's metadata endpoint included), accepts only Prometheus label names as selector keys,
and cuts whatever it reflects from an answer to `REFLECTED_LIMIT` characters.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .analysis import VersionMetrics

REFLECTED_LIMIT = 300
LOAD_FAILURE_LIMIT = 200  # the server's own cap on a reason
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DEFAULT_ALLOWED_ADDRESSES = (
    "http://*.svc:*",
    "https://*.svc:*",
    "http://*.svc.cluster.local:*",
    "https://*.svc.cluster.local:*",
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def clip(text: str, limit: int = REFLECTED_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MeasurementError(Exception):
    """The provider could not measure; the message (at most 300 characters) says why."""

    event_reason: ClassVar[str] = "PrometheusUnreachable"

    def __init__(self, message: str) -> None:
        super().__init__(clip(message))


class AddressNotAllowedError(MeasurementError):
    """The guide names a Prometheus the operator's configuration does not allow."""

    event_reason = "PrometheusAddressNotAllowed"


class SelectorInvalidError(MeasurementError):
    """A selector key is not a Prometheus label name."""

    event_reason = "PrometheusSelectorInvalid"


class MetricsProvider(Protocol):
    async def measure(self, version: str, window_seconds: float) -> VersionMetrics: ...

    async def generation_applied(self) -> int | None: ...

    async def generation_read(self) -> int | None:
        """The lowest routing generation the serving pods have read (loaded or not)."""
        ...

    async def load_failure(self, version: str) -> str | None:
        """Why `version` failed to load in some serving pod; None when no pod reports that."""
        ...


# --- the allow-list -------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowedAddress:
    """One entry: `scheme://host[:port][/path]`. The host may start with `*.` (any name below
    it), the port may be `*` (any); without a port only the scheme's default port matches. The
    path is a prefix by whole segments: `/prom` allows `/prom` and `/prom/x`, not `/prometheus`.
    """

    scheme: str
    host: str
    port: int | None  # None: any port
    path: str

    @classmethod
    def parse(cls, text: str) -> AllowedAddress:
        def refuse(why: str) -> ValueError:
            return ValueError(
                f"{text!r} is not an allowed Prometheus address ({why}); write "
                "scheme://host[:port][/path], e.g. http://*.svc:* or http://198.19.0.1:9090"
            )

        scheme, sep, rest = text.strip().partition("://")
        if not sep or scheme not in _DEFAULT_PORTS:
            raise refuse("the scheme must be http or https")
        netloc, slash, path = rest.partition("/")
        if any(c in rest for c in "?#@\\") or not netloc:
            raise refuse("a host is needed; no user, query or fragment")
        host, port_text = netloc, ""
        if not netloc.startswith("[") and netloc.count(":") == 1:
            host, port_text = netloc.split(":")
        elif netloc.startswith("[") and "]:" in netloc:
            host, port_text = netloc.rsplit(":", 1)
        host = host.strip("[]").lower()
        wildcard = host.startswith("*.")
        if not host or "*" in (host[2:] if wildcard else host):
            raise refuse("only a leading *. may stand for host names")
        if port_text == "*":
            port: int | None = None
        elif port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise refuse("the port must be a number or *")
            port = int(port_text)
        else:
            port = _DEFAULT_PORTS[scheme]
        return cls(scheme, host, port, ("/" + path if slash else "").rstrip("/"))

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]) or len(host) <= len(self.host) - 1:
                return False
        elif host != self.host:
            return False
        return path == self.path or path.startswith(self.path + "/")

    def __str__(self) -> str:
        port = "*" if self.port is None else str(self.port)
        return f"{self.scheme}://{self.host}:{port}{self.path}"


@dataclass(frozen=True)
class AllowList:
    """The Prometheus addresses the operator may query (its configuration, not a guide's)."""

    entries: tuple[AllowedAddress, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> AllowList:
        return cls(tuple(AllowedAddress.parse(t) for t in texts))

    @classmethod
    def default(cls) -> AllowList:
        return cls.parse(DEFAULT_ALLOWED_ADDRESSES)

    def refusal(self, address: str) -> str | None:
        """Why `address` may not be queried; None when it may."""
        shown = clip(address, 120)
        try:
            url = urllib.parse.urlsplit(address)
            host, port = (url.hostname or "").lower(), url.port
        except ValueError:
            return f"Prometheus address {shown} is not a URL"
        segments = url.path.split("/")
        if (
            url.scheme not in _DEFAULT_PORTS
            or not host
            or url.username is not None
            or url.query
            or url.fragment
            or "%" in url.path
            or "\\" in url.path
            or "." in segments
            or ".." in segments
        ):
            return (
                f"Prometheus address {shown} is not allowed by the operator's configuration: "
                "it must be a plain http(s) URL without user, query, fragment or dot segments"
            )
        path = url.path.rstrip("/")
        if port is None:
            port = _DEFAULT_PORTS[url.scheme]
        if any(e.matches(url.scheme, host, port, path) for e in self.entries):
            return None
        allowed = ", ".join(str(e) for e in self.entries) or "none"
        return (
            f"Prometheus address {shown} is not allowed by the operator's configuration "
            f"(prometheus.allowedAddresses: {allowed})"
        )

    def allows(self, address: str) -> bool:
        return self.refusal(address) is None


_configured = AllowList.default()


def configure(allowed: AllowList) -> None:
    """Set the operator's allow-list (from its command line or environment, at startup)."""
    global _configured  # noqa: PLW0603
    _configured = allowed


def configured() -> AllowList:
    return _configured


class GuardedResolver(AbstractResolver):
    """Resolves host names, leaving out addresses no Prometheus of a guide may have."""

    # AWS's IPv6 instance metadata endpoint; the IPv4 ones are all link-local.
    METADATA = (ipaddress.ip_address("fd00:ec2::254"),)

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self.inner = inner if inner is not None else aiohttp.ThreadedResolver()

    @classmethod
    def forbidden(cls, text: str) -> bool:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip in cls.METADATA

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        kept = [r for r in found if not self.forbidden(r["host"])]
        if not kept:
            raise OSError(f"{clip(host, 120)} resolves to no address the operator may query")
        return kept

    async def close(self) -> None:
        await self.inner.close()


# --- PromQL ---------------------------------------------------------------------------------


def label_name_error(name: str) -> str | None:
    if LABEL_NAME.fullmatch(name):
        return None
    return (
        f"selector key {clip(name, 60)!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"
    )


def _matchers(selector: dict[str, str], **extra: str) -> str:
    labels = {**selector, **extra}
    for name in labels:
        error = label_name_error(name)
        if error:
            raise ValueError(error)
    return ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def queries(version: str, window_seconds: float, selector: dict[str, str]) -> dict[str, str]:
    """The PromQL behind each measurement (pure, so it is tested as text)."""
    window = f"{max(int(window_seconds), 1)}s"
    served = _matchers(selector, endpoint="recommendations", model_version=version)
    by_version = _matchers(selector, model_version=version)
    clicks = _matchers(selector, model_version=version, event="click")
    carts = _matchers(selector, model_version=version, event="cart")
    purchases = _matchers(selector, model_version=version, event="purchase")
    return {
        "requests": f"sum(increase(shopping_guide_requests_total{{{served}}}[{window}]))",
        "errors": (
            f'sum(increase(shopping_guide_requests_total{{{served},code=~"5.."}}[{window}]))'
        ),
        "p99_seconds": (
            "histogram_quantile(0.99, sum by (le) ("
            f"rate(shopping_guide_request_duration_seconds_bucket{{{served}}}[{window}])))"
        ),
        "recommendations": (
            f"sum(increase(shopping_guide_recommendations_total{{{by_version}}}[{window}]))"
        ),
        "clicks": f"sum(increase(shopping_guide_feedback_total{{{clicks}}}[{window}]))",
        "carts": f"sum(increase(shopping_guide_feedback_total{{{carts}}}[{window}]))",
        "purchases": f"sum(increase(shopping_guide_feedback_total{{{purchases}}}[{window}]))",
        "revenue": f"sum(increase(shopping_guide_revenue_total{{{by_version}}}[{window}]))",
    }


def generation_query(selector: dict[str, str]) -> str:
    """The lowest routing generation any selected serving pod reports."""
    return f"min(shopping_guide_routing_generation{{{_matchers(selector)}}})"


def generation_read_query(selector: dict[str, str]) -> str:
    """The lowest routing generation any selected serving pod has read."""
    return f"min(shopping_guide_routing_generation_read{{{_matchers(selector)}}})"


def load_failure_query(version: str, selector: dict[str, str]) -> str:
    """Pods where `version` failed to load, counted by the reason they give."""
    failed = _matchers(selector, model_version=version)
    return f"count by (reason) (shopping_guide_model_load_failed{{{failed}}} == 1)"


def samples(body: Any) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) pairs of an instant-vector answer, NaN samples left out."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise MeasurementError(f"Prometheus answered with an error: {clip(str(error))}")
    result = (body.get("data") or {}).get("result")
    if not isinstance(result, list):
        raise MeasurementError("Prometheus answer has no result list")
    found = []
    for sample in result:
        try:
            labels = {str(k): str(v) for k, v in (sample.get("metric") or {}).items()}
            value = float(sample["value"][1])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise MeasurementError(f"malformed Prometheus sample: {clip(repr(sample))}") from exc
        if not math.isnan(value):
            found.append((labels, value))
    return found


def scalar(body: Any) -> float | None:
    """The single value of an instant-vector answer; None when the vector is empty or NaN."""
    found = samples(body)
    return found[0][1] if found else None


def describe_load_failures(found: list[tuple[dict[str, str], float]]) -> str | None:
    """`out of memory (2 pods); file missing (1 pod)`, cut to the reflected limit."""
    counted = sorted(
        ((int(n), clip(labels.get("reason") or "no reason given", LOAD_FAILURE_LIMIT))
         for labels, n in found if n > 0),
        key=lambda pair: -pair[0],
    )  # fmt: skip
    if not counted:
        return None
    return clip("; ".join(f"{r} ({n} pod{'s' if n != 1 else ''})" for n, r in counted))


# --- the provider ---------------------------------------------------------------------------


class PrometheusProvider:
    """Queries one Prometheus for one guide's serving pods (`selector`)."""

    def __init__(
        self,
        address: str,
        selector: dict[str, str],
        timeout_seconds: float = 5.0,
        allowed: AllowList | None = None,
    ) -> None:
        self.address = address.rstrip("/")
        self.selector = selector
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        # Refused before any query: an address outside the allow-list is never contacted.
        self.refused: MeasurementError | None = None
        refusal = (allowed or configured()).refusal(address)
        if refusal is not None:
            self.refused = AddressNotAllowedError(refusal)
        else:
            errors = [e for e in map(label_name_error, selector) if e]
            if errors:
                self.refused = SelectorInvalidError(
                    f"rollout.analysis.prometheus.selector: {'; '.join(errors)}"
                )

    async def _query(self, session: aiohttp.ClientSession, promql: str) -> Any:
        shown = clip(self.address, 120)
        try:
            async with session.get(
                f"{self.address}/api/v1/query", params={"query": promql}, allow_redirects=False
            ) as response:
                if 300 <= response.status < 400:
                    raise MeasurementError(
                        f"Prometheus at {shown} answered with a redirect ({response.status}), "
                        "which the operator does not follow"
                    )
                try:
                    return await response.json(content_type=None)
                except ValueError as exc:
                    raise MeasurementError(
                        f"Prometheus at {shown} answered {response.status} without JSON"
                    ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MeasurementError(
                f"Prometheus at {shown} unreachable: {exc or type(exc).__name__}"
            ) from exc

    async def _ask(self, *promql: str) -> list[Any]:
        if self.refused is not None:
            raise self.refused
        connector = aiohttp.TCPConnector(resolver=GuardedResolver())
        async with aiohttp.ClientSession(timeout=self.timeout, connector=connector) as session:
            return [await self._query(session, q) for q in promql]

    async def measure(self, version: str, window_seconds: float) -> VersionMetrics:
        if self.refused is not None:
            raise self.refused
        named = queries(version, window_seconds, self.selector)
        answers = dict(zip(named, await self._ask(*named.values()), strict=True))
        values = {name: scalar(body) for name, body in answers.items()}
        return VersionMetrics(
            requests=values["requests"] or 0.0,
            errors=values["errors"] or 0.0,
            p99_seconds=values["p99_seconds"],
            recommendations=values["recommendations"] or 0.0,
            clicks=values["clicks"] or 0.0,
            carts=values["carts"] or 0.0,
            purchases=values["purchases"] or 0.0,
            revenue=values["revenue"] or 0.0,
        )

    async def generation_applied(self) -> int | None:
        """The lowest routing generation any scraped serving pod reports."""
        if self.refused is not None:
            raise self.refused
        (body,) = await self._ask(generation_query(self.selector))
        value = scalar(body)
        return None if value is None else int(value)

    async def generation_read(self) -> int | None:
        if self.refused is not None:
            raise self.refused
        (body,) = await self._ask(generation_read_query(self.selector))
        value = scalar(body)
        return None if value is None else int(value)

    async def load_failure(self, version: str) -> str | None:
        """Why `version` failed to load, over every selected pod that reports it failed."""
        if self.refused is not None:
            raise self.refused
        (body,) = await self._ask(load_failure_query(version, self.selector))
        return describe_load_failures(samples(body))
