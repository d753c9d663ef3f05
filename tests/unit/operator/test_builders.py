"""Every builder on plain dicts: names, owner references, hardening, and the spec mapped in."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from shopping_guide_contracts.routing import CONFIGMAP_KEY, Routing, parse
from shopping_guide_operator.builders.deployment import build_deployment
from shopping_guide_operator.builders.hpa import build_hpa
from shopping_guide_operator.builders.networkpolicy import build_network_policy
from shopping_guide_operator.builders.pdb import build_pdb
from shopping_guide_operator.builders.routing import build_routing_configmap
from shopping_guide_operator.builders.service import build_service
from shopping_guide_operator.builders.training import build_cronjob, build_job, trainer_args
from shopping_guide_operator.spec import Guide, SpecError
from tests.conftest import REPO
from tests.unit.operator.conftest import deep_merge

MakeGuide = Callable[..., Guide]
OWNER = {
    "apiVersion": "shoppingguide.io/v1alpha1",
    "kind": "ShoppingGuide",
    "name": "storefront",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def test_every_child_is_owned_labelled_and_in_the_namespace(make_guide: MakeGuide) -> None:
    guide = make_guide({"training": {"schedule": "0 */6 * * *"}, "serving": {"networkPolicy": {}}})
    children = [
        build_deployment(guide),
        build_service(guide),
        build_hpa(guide),
        build_pdb(guide),
        build_network_policy(guide),
        build_routing_configmap(guide, Routing(stable="v1")),
        build_cronjob(guide, "v1"),
        build_job(guide, "abcdef0123456789", 0, "initial", None),
    ]
    for child in children:
        assert child is not None
        meta = child["metadata"]
        assert meta["namespace"] == "shop"
        assert meta["ownerReferences"] == [OWNER]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "shopping-guide-operator"
        assert meta["labels"]["shoppingguide.io/guide"] == "storefront"


def test_deployment_is_hardened_and_mounts_the_routing_as_a_directory(
    make_guide: MakeGuide,
) -> None:
    deployment = build_deployment(make_guide())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert container["command"] == ["shopping-guide"]
    assert container["args"][:1] == ["serve"]
    assert "/etc/shopping-guide/routing/routing.json" in container["args"]
    # The server binds the pod's own address, expanded by kubelet from the downward API.
    host = container["args"][container["args"].index("--host") + 1]
    assert host == "$(POD_IP)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["routing"]
    assert mounts["models"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["routing"]["configMap"]["name"] == "storefront-routing"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "shopping-guide-recommender",
        "app.kubernetes.io/instance": "storefront",
        "app.kubernetes.io/component": "serving",
    }


def test_a_serving_pod_serves_through_its_removal_from_the_endpoints(
    make_guide: MakeGuide,
) -> None:
    pod = build_deployment(make_guide())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # kubelet's sleep action: nothing to exec in the image.
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    args = container["args"]
    drain = float(args[args.index("--drain-seconds") + 1])
    shutdown = float(args[args.index("--shutdown-timeout") + 1])
    assert prestop >= 5 and drain > 0 and shutdown > 0
    # The grace period runs from the deletion: preStop, drain and shutdown all fit in it.
    assert pod["terminationGracePeriodSeconds"] > prestop + drain + shutdown


def test_replicas_belong_to_the_hpa_when_autoscaling_is_on(make_guide: MakeGuide) -> None:
    assert "replicas" not in build_deployment(make_guide())["spec"]
    fixed = make_guide({"serving": {"autoscaling": None}})
    assert build_deployment(fixed)["spec"]["replicas"] == 3
    assert build_hpa(fixed) is None
    disabled = make_guide({"serving": {"autoscaling": {"enabled": False}}})
    assert build_deployment(disabled)["spec"]["replicas"] == 3


def test_hpa_scales_the_deployment_on_cpu_and_a_custom_metric(make_guide: MakeGuide) -> None:
    guide = make_guide(
        {"serving": {"autoscaling": {"metric": {"name": "rps", "averageValue": "50"}}}}
    )
    hpa = build_hpa(guide)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "storefront",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    cpu, pods = spec["metrics"]
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert pods["pods"] == {
        "metric": {"name": "rps"},
        "target": {"type": "AverageValue", "averageValue": "50"},
    }


def test_the_scale_down_window_is_the_hpas_default_unless_set(make_guide: MakeGuide) -> None:
    default = build_hpa(make_guide())
    assert default is not None and "behavior" not in default["spec"]
    quick = build_hpa(
        make_guide({"serving": {"autoscaling": {"scaleDownStabilizationSeconds": 30}}})
    )
    assert quick is not None
    assert quick["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 30}}


def test_pdb_defaults_to_one_unavailable_and_can_be_switched_off(make_guide: MakeGuide) -> None:
    pdb = build_pdb(make_guide())
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"
    custom = build_pdb(make_guide({"serving": {"podDisruptionBudget": {"minAvailable": "50%"}}}))
    assert custom is not None
    assert custom["spec"] == {**custom["spec"], "minAvailable": "50%"}
    assert "maxUnavailable" not in custom["spec"]
    assert build_pdb(make_guide({"serving": {"podDisruptionBudget": {"enabled": False}}})) is None


def test_network_policy_is_optional_and_defaults_to_the_namespace(make_guide: MakeGuide) -> None:
    assert build_network_policy(make_guide()) is None
    policy = build_network_policy(make_guide({"serving": {"networkPolicy": {}}}))
    assert policy is not None
    rule, scrape = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    # Prometheus, wherever in the cluster it runs, reaches the metrics port by default.
    assert scrape == {
        "from": [{"namespaceSelector": {}}],
        "ports": [{"port": 9090, "protocol": "TCP"}],
    }
    scrapers = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    custom = build_network_policy(
        make_guide({"serving": {"metricsPort": 9400, "networkPolicy": {"metricsFrom": scrapers}}})
    )
    assert custom is not None
    assert custom["spec"]["ingress"][1] == {
        "from": scrapers,
        "ports": [{"port": 9400, "protocol": "TCP"}],
    }
    peers = [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]
    allowed = build_network_policy(make_guide({"serving": {"networkPolicy": {"from": peers}}}))
    assert allowed is not None
    assert allowed["spec"]["ingress"][0]["from"] == peers


def test_service_selects_the_serving_pods(make_guide: MakeGuide) -> None:
    service = build_service(make_guide({"serving": {"service": {"port": 8000}}}))
    assert service["metadata"]["name"] == "storefront"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "serving"


def test_routing_configmap_holds_the_contract_document(make_guide: MakeGuide) -> None:
    routing = Routing(stable="v2", salt="s", generation=4)
    configmap = build_routing_configmap(make_guide(), routing)
    assert configmap["metadata"]["name"] == "storefront-routing"
    assert parse(configmap["data"][CONFIGMAP_KEY]) == routing
    assert json.loads(configmap["data"][CONFIGMAP_KEY])["generation"] == 4


def test_trainer_args_carry_the_whole_training_spec(make_guide: MakeGuide) -> None:
    args = trainer_args(make_guide(), champion="v1")
    text = " ".join(args)
    assert args[0] == "train"
    assert "--events /data/exports/interactions.csv --format csv" in text
    assert "--user-col user_id --item-col item_id --event-col event" in text
    # Sorted, so the Job (and its name) does not depend on dict order.
    assert "--event-weight cart=4.0 --event-weight purchase=10.0 --event-weight view=1.0" in text
    assert "--model-store /models --algorithm als --param alpha=2.0 --param factors=32" in text
    assert "--split random --test-fraction 0.2 --k 10 --seed 0" in text
    assert "--keep 4 --champion v1 --protect v1" in text
    assert args[-2:] == ["--termination-log", "/dev/termination-log"]
    assert "--champion" not in trainer_args(make_guide(), champion=None)
    assert "--tune" not in args


def test_bpr_params_use_the_trainer_names(make_guide: MakeGuide) -> None:
    guide = make_guide({"model": {"algorithm": "bpr", "alpha": None, "learningRate": 0.05}})
    assert "learning_rate=0.05" in " ".join(trainer_args(guide, None))


def test_tuning_flags(make_guide: MakeGuide) -> None:
    guide = make_guide({"training": {"tune": {"enabled": True, "trials": 8}}})
    text = " ".join(trainer_args(guide, None))
    assert "--tune --tune-method random --tune-trials 8 --metric ndcg@10" in text


def test_a_basket_column_reaches_the_trainer(make_guide: MakeGuide) -> None:
    guide = make_guide({"data": {"interactions": {"columns": {"basket": "InvoiceNo"}}}})
    assert "--basket-col InvoiceNo" in " ".join(trainer_args(guide, None))
    assert "--basket-col" not in trainer_args(make_guide(), None)


def test_ease_params_and_auto_tuning(make_guide: MakeGuide) -> None:
    model = {"algorithm": "ease", "alpha": None, "factors": None}
    ease = make_guide({"model": {**model, "regularization": 50, "neighbours": 20, "binary": False}})
    text = " ".join(trainer_args(ease, None))
    assert "--algorithm ease --param binary=false --param neighbours=20" in text
    assert "--param regularization=50" in text and "--tune" not in text
    auto = make_guide({"model": {"algorithm": "auto", "alpha": None, "factors": None}})
    text = " ".join(trainer_args(auto, None))
    # The family is chosen by tuning, so an auto guide tunes even without training.tune.
    assert "--algorithm auto --split" in text
    assert "--tune --tune-method random" in text and "--metric ndcg@10" in text


def test_job_reports_through_the_termination_message(make_guide: MakeGuide) -> None:
    guide = make_guide(
        {
            "training": {
                "nodeSelector": {"pool": "train"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        }
    )
    job = build_job(guide, "abcdef0123456789", 2, "retrain-annotation", "v1")
    assert job["metadata"]["name"] == "storefront-train-abcdef01-2"
    assert job["metadata"]["labels"]["shoppingguide.io/trigger"] == "retrain-annotation"
    assert job["metadata"]["annotations"]["shoppingguide.io/spec-hash"] == guide.model_spec_hash()
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["terminationMessagePolicy"] == "File"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"pool": "train"}
    assert pod["tolerations"][0]["key"] == "gpu"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "events", "readOnly": True}


def test_serving_placement(make_guide: MakeGuide) -> None:
    guide = make_guide({"serving": {"nodeSelector": {"pool": "serve"}}})
    pod = build_deployment(guide)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "serve"}
    assert "tolerations" not in pod


def test_cronjob_only_with_a_schedule(make_guide: MakeGuide) -> None:
    assert build_cronjob(make_guide(), "v1") is None
    guide = make_guide({"training": {"schedule": "0 */6 * * *", "timeZone": "Europe/Berlin"}})
    cronjob = build_cronjob(guide, "v1")
    assert cronjob is not None
    assert cronjob["metadata"]["name"] == "storefront-train"
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("0 */6 * * *", "Europe/Berlin")
    assert spec["concurrencyPolicy"] == "Forbid"
    template = spec["jobTemplate"]
    assert template["metadata"]["labels"]["shoppingguide.io/trigger"] == "schedule"
    assert "--champion" in template["spec"]["template"]["spec"]["containers"][0]["args"]


def test_spec_hash_ignores_what_does_not_change_the_model(make_guide: MakeGuide) -> None:
    base = make_guide().model_spec_hash()
    assert make_guide({"training": {"qualityGate": {"minimum": 0.5}}}).model_spec_hash() == base
    assert make_guide({"serving": {"replicas": 9}}).model_spec_hash() == base
    assert make_guide({"image": "other:1"}).model_spec_hash() == base
    assert make_guide({"model": {"factors": 64}}).model_spec_hash() != base
    assert make_guide({"data": {"eventWeights": {"view": 2}}}).model_spec_hash() != base


def test_a_pinned_version_outside_the_grammar_is_a_spec_error(make_guide: MakeGuide) -> None:
    assert make_guide({"model": {"pinnedVersion": "v20261201-1"}}).pinned_version == "v20261201-1"
    for bad in ("../stable", "a/b", "V1"):
        with pytest.raises(SpecError, match="not a version name"):
            make_guide({"model": {"pinnedVersion": bad}})


def _with_crd_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server stores: `value` with every default of the CRD schema filled in."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and "items" in schema:
            return [_with_crd_defaults(schema["items"], v) for v in value]
        return value
    out = dict(value)
    for name, sub in (schema.get("properties") or {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = _with_crd_defaults(sub, out[name])
    return out


def _crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "shoppingguide.io_shoppingguides.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"data": {"catalog": {"fromEvents": {"title": "title"}}}},
        {"training": {"tune": {"trials": 5}, "evaluation": {"k": 20}}},
        {"model": {"algorithm": "itemknn", "factors": None, "alpha": None, "neighbours": 50}},
    ],
)
def test_spec_hash_is_the_same_with_or_without_the_crd_defaults(
    body: dict[str, Any], spec: dict[str, Any]
) -> None:
    plain = deep_merge(body, {"spec": spec})
    if "evaluation" in spec.get("training", {}):
        plain["spec"]["training"]["qualityGate"]["metric"] = "ndcg@20"
    defaulted = copy.deepcopy(plain)
    defaulted["spec"] = _with_crd_defaults(_crd_spec_schema(), plain["spec"])
    assert defaulted != plain  # the CRD does fill something in
    assert Guide.parse(defaulted).model_spec_hash() == Guide.parse(plain).model_spec_hash()
    assert Guide.parse(plain).model_spec_hash().startswith("v2:")


def test_spec_hashes_hold_the_current_and_the_legacy_hash(body: dict[str, Any]) -> None:
    guide = Guide.parse(body)
    current, legacy = guide.spec_hashes()
    assert current == guide.model_spec_hash()
    # What the operator before the v2 hash recorded for this body, in status.training.completed.
    assert legacy == "8b0405816a49afb5" == guide.legacy_spec_hash()
    assert current != legacy


def test_the_server_knows_its_guide_and_serves_metrics_on_their_own_port(
    make_guide: MakeGuide,
) -> None:
    deployment = build_deployment(make_guide())
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SHOPPING_GUIDE_NAME"] == {"name": "SHOPPING_GUIDE_NAME", "value": "storefront"}
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert args[args.index("--guide-name") + 1] == "storefront"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"


def test_metrics_and_serving_ports_must_differ(make_guide: MakeGuide) -> None:
    with pytest.raises(SpecError, match="must differ"):
        make_guide({"serving": {"port": 9090}})
    assert make_guide({"serving": {"port": 9090, "metricsPort": 9091}}).serving.metrics_port == 9091
