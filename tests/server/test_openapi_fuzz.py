"""The server fuzzed from its own OpenAPI document (Schemathesis): valid and invalid requests
to every operation, against a real server with a real model and catalogue. No answer is a
5xx, and every answer has a documented status, content type and body."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shopping_guide.cli import main
from shopping_guide.serving import openapi
from tests.conftest import two_taste_rows
from tests.server.conftest import Server, running_server
from tests.server.test_shopping_guide import write_catalog

EXAMPLES = 30
# aiohttp refuses a request line longer than this (8190 bytes) itself, with a plain-text 400,
# before the application sees it: long lists go in a POST body.
MAX_REQUEST_LINE = 8190

schema = schemathesis.openapi.from_dict(openapi.document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
    deterministic=True,  # the same cases every run: a failure reproduces
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # A request the schema forbids (an unknown field, a k of 0) must be refused.
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on a model with a catalogue: every endpoint, the guide included, can answer."""
    root = tmp_path_factory.mktemp("fuzz")
    events = root / "events.csv"
    events.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in two_taste_rows()))
    write_catalog(root / "catalog.csv")
    store = root / "store"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--events", str(events), "--catalog", str(root / "catalog.csv"),
                     "--catalog-stock-col", "in_stock", "--model-store", str(store),
                     "--algorithm", "als", "--param", "factors=4"]) == 0  # fmt: skip
    version = json.loads(out.getvalue())["version"]
    with running_server(store, version, Path(root / "server")) as srv:
        yield srv


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_server_keeps_its_documented_contract(
    case: schemathesis.Case[Any], fuzzed: Server
) -> None:
    response = case.call(base_url=fuzzed.url)
    url = response.request.url or ""
    if len(url) - len(fuzzed.url) + len(case.method) + len(" HTTP/1.1") + 1 > MAX_REQUEST_LINE:
        assert response.status_code == 400
        return
    case.validate_response(response, checks=CHECKS)
