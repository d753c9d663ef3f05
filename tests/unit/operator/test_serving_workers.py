"""The serving container tells its server how many CPUs it requested: without a CPU limit,
that is how many worker processes it runs (serving/workers.py)."""

from __future__ import annotations

from collections.abc import Callable

from shopping_guide_operator.builders.deployment import build_deployment
from shopping_guide_operator.constants import SERVER_CONTAINER
from shopping_guide_operator.spec import Guide


def test_the_cpu_request_reaches_the_server_in_whole_cpus(
    make_guide: Callable[..., Guide],
) -> None:
    (container,) = build_deployment(make_guide())["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # The name serving/workers.py reads (CPUS_ENV).
    assert env["SHOPPING_GUIDE_CPUS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": SERVER_CONTAINER,
        "resource": "requests.cpu",
        "divisor": "1",
    }
