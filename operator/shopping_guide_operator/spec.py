"""`ShoppingGuide` objects, parsed once into typed values that every builder takes.

The CRD's schema applies the defaults and rejects bad input at apply time; the same defaults
are repeated here so that a builder fed a plain dict (a unit test, an older object stored
before a default existed) behaves like one fed an object from the API server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shopping_guide_contracts.merchandising import Merchandising, MerchandisingError
from shopping_guide_contracts.merchandising import parse as parse_merchandising
from shopping_guide_contracts.versions import VersionError, validate_version

from .constants import ANNOTATION_RETRAIN, API_VERSION, KIND
from .durations import parse_duration

JSON = dict[str, Any]

# The model params each algorithm takes, spec name -> trainer name (`--param NAME=VALUE`).
MODEL_PARAMS: dict[str, dict[str, str]] = {
    "als": {
        "factors": "factors",
        "iterations": "iterations",
        "regularization": "regularization",
        "alpha": "alpha",
        "weighting": "weighting",
    },
    "bpr": {
        "factors": "factors",
        "iterations": "iterations",
        "learningRate": "learning_rate",
        "regularization": "regularization",
        "weighting": "weighting",
    },
    "itemknn": {"similarity": "similarity", "neighbours": "neighbours", "k1": "k1", "b": "b"},
    "ease": {"regularization": "regularization", "neighbours": "neighbours", "binary": "binary"},
    # Tunes each family with its own search space: no parameters of its own.
    "auto": {},
}


# Keys of spec.model that are not trainer params: the algorithm, and the GitOps pin of serving.
_MODEL_KEYS = ("algorithm", "pinnedVersion")


# The schema of the document Guide.model_spec_hash hashes: the prefix of every hash it makes.
SPEC_HASH_SCHEMA = "v2"
# A refresh reads the whole events file: more often than this costs more than it tells.
MIN_TRENDING_REFRESH_SECONDS = 300


def _number(value: Any) -> Any:
    """1 and 1.0 hash alike (YAML and the API server may hand either); other values as is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


class SpecError(ValueError):
    """A spec the operator cannot act on (the CRD schema normally stops these earlier)."""


def _obj(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be an object")
    return value


def _claim(parent: Mapping[str, Any], where: str) -> str:
    claim = _obj(parent, "persistentVolumeClaim").get("claimName")
    if not isinstance(claim, str) or not claim:
        raise SpecError(f"{where}.persistentVolumeClaim.claimName is required")
    return claim


@dataclass(frozen=True)
class S3Location:
    """An object (events) or a prefix (the model store) in S3 or what speaks its API; the
    credentials stay in a Secret, read into the pod's environment."""

    bucket: str
    path: str
    endpoint: str | None
    region: str
    secret: str
    access_key_key: str
    secret_key_key: str
    ca_config_map: str | None = None
    ca_key: str = "ca.crt"

    @classmethod
    def parse(cls, s3: Mapping[str, Any], where: str, path_field: str) -> S3Location:
        bucket = s3.get("bucket")
        if not isinstance(bucket, str) or not bucket:
            raise SpecError(f"{where}.bucket is required")
        path = str(s3.get(path_field, "") or "").strip("/")
        if ".." in path.split("/"):
            raise SpecError(f"{where}.{path_field} must not contain '..'")
        credentials = _obj(s3, "credentialsSecret")
        secret = credentials.get("name")
        if not isinstance(secret, str) or not secret:
            raise SpecError(f"{where}.credentialsSecret.name is required")
        ca = _obj(s3, "caBundle")
        return cls(
            bucket=bucket,
            path=path,
            endpoint=s3.get("endpoint") or None,
            region=str(s3.get("region", "us-east-1")),
            secret=secret,
            access_key_key=str(credentials.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID")),
            secret_key_key=str(credentials.get("secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")),
            ca_config_map=ca.get("configMapName") or None,
            ca_key=str(ca.get("key", "ca.crt")),
        )

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"


@dataclass(frozen=True)
class ModelStoreSpec:
    """Exactly one of a claim (ReadWriteMany, mounted by every pod) and an object store
    (copied into each serving pod's cache)."""

    claim: str | None
    s3: S3Location | None
    keep: int = 5
    cache_limit: str = "4Gi"

    @classmethod
    def parse(cls, store: Mapping[str, Any]) -> ModelStoreSpec:
        s3 = _obj(store, "s3")
        if bool(s3) == bool(store.get("persistentVolumeClaim")):
            raise SpecError("modelStore needs exactly one of persistentVolumeClaim and s3")
        return cls(
            claim=None if s3 else _claim(store, "modelStore"),
            s3=S3Location.parse(s3, "modelStore.s3", "prefix") if s3 else None,
            keep=int(store.get("keep", 5)),
            cache_limit=str(s3.get("cacheSizeLimit", "4Gi")),
        )


def _pinned(model: Mapping[str, Any]) -> str | None:
    pinned = model.get("pinnedVersion")
    if not pinned:
        return None
    try:
        return validate_version(pinned, "model.pinnedVersion")
    except VersionError as exc:
        raise SpecError(str(exc)) from exc


@dataclass(frozen=True)
class Placement:
    """Where a pod may run: copied verbatim into the pod spec."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[JSON, ...] = ()

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Placement:
        return cls(
            node_selector=dict(_obj(spec, "nodeSelector")),
            tolerations=tuple(dict(t) for t in spec.get("tolerations") or ()),
        )


@dataclass(frozen=True)
class Data:
    # Exactly one of a claim and a path in it, or an object in S3.
    claim: str | None
    path: str
    format: str | None
    columns: Mapping[str, str]
    on_invalid: str
    event_weights: Mapping[str, float]
    half_life_days: float | None
    min_user_items: int | None
    exclude_items: tuple[str, ...] = ()
    catalog: Mapping[str, Any] | None = None
    s3: S3Location | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Data:
        interactions = _obj(data, "interactions")
        s3 = _obj(interactions, "s3")
        if bool(s3) == bool(interactions.get("persistentVolumeClaim")):
            raise SpecError("data.interactions needs exactly one of persistentVolumeClaim and s3")
        location = S3Location.parse(s3, "data.interactions.s3", "key") if s3 else None
        path = interactions.get("path") if location is None else location.path
        if not isinstance(path, str) or not path or path.startswith("/"):
            raise SpecError("data.interactions.path must be a path relative to the claim")
        columns = {"user": "user_id", "item": "item_id", **_obj(interactions, "columns")}
        return cls(
            s3=location,
            claim=None if location else _claim(interactions, "data.interactions"),
            path=path,
            format=interactions.get("format"),
            columns=columns,
            on_invalid=str(interactions.get("onInvalid", "skip")),
            event_weights={k: float(v) for k, v in _obj(data, "eventWeights").items()},
            half_life_days=data.get("halfLifeDays"),
            min_user_items=data.get("minUserItems"),
            exclude_items=tuple(str(i) for i in data.get("excludeItems") or ()),
            catalog=data.get("catalog") or None,
        )


@dataclass(frozen=True)
class Model:
    algorithm: str
    params: Mapping[str, Any]

    @classmethod
    def parse(cls, model: Mapping[str, Any]) -> Model:
        algorithm = str(model.get("algorithm", "als"))
        if algorithm not in MODEL_PARAMS:
            raise SpecError(
                f"model.algorithm {algorithm!r} is not one of {', '.join(MODEL_PARAMS)}"
            )
        names = MODEL_PARAMS[algorithm]
        foreign = sorted(k for k in model if k not in _MODEL_KEYS and k not in names)
        if foreign:
            raise SpecError(f"model.{', '.join(foreign)} do not apply to {algorithm}")
        return cls(algorithm, {names[k]: v for k, v in model.items() if k in names})


@dataclass(frozen=True)
class Gate:
    metric: str = "ndcg@10"
    minimum: float = 0.0
    max_regression: float | None = 0.02


@dataclass(frozen=True)
class Training:
    schedule: str | None
    time_zone: str | None
    gate: Gate
    evaluation: Mapping[str, Any]
    tune: Mapping[str, Any]
    retry_initial: str
    retry_max: str
    active_deadline_seconds: int
    resources: Mapping[str, Any]
    placement: Placement

    @classmethod
    def parse(cls, training: Mapping[str, Any]) -> Training:
        gate = _obj(training, "qualityGate")
        retry = _obj(training, "retry")
        regression = gate.get("maxRegression", 0.02)
        return cls(
            schedule=training.get("schedule") or None,
            time_zone=training.get("timeZone") or None,
            gate=Gate(
                metric=str(gate.get("metric", "ndcg@10")),
                minimum=float(gate.get("minimum", 0.0)),
                max_regression=None if regression is None else float(regression),
            ),
            evaluation={
                "k": 10,
                "split": "random",
                "testFraction": 0.2,
                "seed": 0,
                **_obj(training, "evaluation"),
            },
            tune={"enabled": False, **_obj(training, "tune")},
            retry_initial=str(retry.get("initialDelay", "30s")),
            retry_max=str(retry.get("maxDelay", "30m")),
            active_deadline_seconds=int(training.get("activeDeadlineSeconds", 21600)),
            resources=dict(_obj(training, "resources")),
            placement=Placement.parse(training),
        )


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_cpu: int | None
    metric_name: str | None
    metric_average: str | None
    scale_down_stabilization_seconds: int | None = None


# A NetworkPolicy peer for any pod of any namespace of the cluster.
_ALL_IN_CLUSTER: tuple[JSON, ...] = ({"namespaceSelector": {}},)


@dataclass(frozen=True)
class Serving:
    replicas: int
    port: int
    resources: Mapping[str, Any]
    service_type: str
    service_port: int
    autoscaling: Autoscaling | None
    pdb: Mapping[str, Any] | None
    network_policy_from: tuple[JSON, ...] | None
    placement: Placement
    metrics_port: int = 9090
    # Peers admitted to the metrics port while the NetworkPolicy is on: default, the cluster.
    network_policy_metrics_from: tuple[JSON, ...] = ({"namespaceSelector": {}},)
    # Rules and exploration, copied into the routing document for every pod to apply.
    merchandising: Merchandising = field(default_factory=Merchandising)
    # spec.serving.trending as given: the trainer's window, baseline and minimum count.
    trending: Mapping[str, Any] | None = None
    # spec.serving.trending.refreshEvery in seconds: how often trending is refreshed between
    # trainings (None: only by training).
    trending_refresh_every: float | None = None

    @classmethod
    def parse(cls, serving: Mapping[str, Any]) -> Serving:
        scaling = _obj(serving, "autoscaling")
        autoscaling = None
        if serving.get("autoscaling") is not None and scaling.get("enabled", True):
            metric = _obj(scaling, "metric")
            autoscaling = Autoscaling(
                min_replicas=int(scaling.get("minReplicas", 2)),
                max_replicas=int(scaling.get("maxReplicas", scaling.get("minReplicas", 2))),
                target_cpu=scaling.get("targetCPUUtilizationPercentage"),
                metric_name=metric.get("name"),
                metric_average=None if not metric else str(metric.get("averageValue")),
                scale_down_stabilization_seconds=scaling.get("scaleDownStabilizationSeconds"),
            )
            if autoscaling.min_replicas > autoscaling.max_replicas:
                raise SpecError("serving.autoscaling.minReplicas must not exceed maxReplicas")
        if int(serving.get("port", 8080)) == int(serving.get("metricsPort", 9090)):
            raise SpecError("serving.port and serving.metricsPort must differ")
        try:
            merchandising = parse_merchandising(
                {"rules": serving.get("rules"), "exploration": serving.get("exploration")}
            )
        except MerchandisingError as exc:
            raise SpecError(f"serving.{exc}") from exc
        pdb = {"enabled": True, **_obj(serving, "podDisruptionBudget")}
        policy = _obj(serving, "networkPolicy")
        service = _obj(serving, "service")
        return cls(
            replicas=int(serving.get("replicas", 2)),
            port=int(serving.get("port", 8080)),
            resources=dict(
                _obj(serving, "resources")
                or {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
            ),
            service_type=str(service.get("type", "ClusterIP")),
            service_port=int(service.get("port", 80)),
            autoscaling=autoscaling,
            pdb=pdb if pdb["enabled"] else None,
            network_policy_from=(
                tuple(dict(p) for p in policy.get("from") or ())
                if serving.get("networkPolicy") is not None and policy.get("enabled", True)
                else None
            ),
            placement=Placement.parse(serving),
            metrics_port=int(serving.get("metricsPort", 9090)),
            network_policy_metrics_from=tuple(
                dict(p) for p in policy.get("metricsFrom") or _ALL_IN_CLUSTER
            ),
            merchandising=merchandising,
            trending=dict(_obj(serving, "trending")) if serving.get("trending") else None,
            trending_refresh_every=_refresh_every(serving),
        )


def _refresh_every(serving: Mapping[str, Any]) -> float | None:
    every = (serving.get("trending") or {}).get("refreshEvery")
    if every is None:
        return None
    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise SpecError(f"serving.trending.refreshEvery: {exc}") from exc
    if seconds < MIN_TRENDING_REFRESH_SECONDS:
        raise SpecError("serving.trending.refreshEvery must be at least 5m")
    return seconds


@dataclass(frozen=True)
class Guide:
    """One ShoppingGuide: identity, the parsed spec, and what the operator reads of it."""

    name: str
    namespace: str
    uid: str
    generation: int
    image: str
    image_pull_policy: str
    image_pull_secrets: tuple[str, ...]
    data: Data
    model_store: ModelStoreSpec
    model: Model
    training: Training
    serving: Serving
    rollout: Mapping[str, Any] | None
    retrain_token: str
    raw_spec: Mapping[str, Any] = field(repr=False, compare=False)
    pinned_version: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Guide:
        meta = _obj(body, "metadata")
        spec = _obj(body, "spec")
        image = spec.get("image")
        if not isinstance(image, str) or not image:
            raise SpecError("spec.image is required")
        store = _obj(spec, "modelStore")
        data, serving = Data.parse(_obj(spec, "data")), Serving.parse(_obj(spec, "serving"))
        if serving.trending_refresh_every is not None and not data.columns.get("time"):
            raise SpecError(
                "serving.trending.refreshEvery needs data.interactions.columns.time, "
                "the column trending is computed from"
            )
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0)),
            image=image,
            image_pull_policy=str(spec.get("imagePullPolicy", "IfNotPresent")),
            image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or ()),
            data=data,
            model_store=ModelStoreSpec.parse(store),
            model=Model.parse(_obj(spec, "model")),
            training=Training.parse(_obj(spec, "training")),
            serving=serving,
            rollout=dict(spec["rollout"]) if spec.get("rollout") else None,
            retrain_token=str(_obj(meta, "annotations").get(ANNOTATION_RETRAIN, "")),
            pinned_version=_pinned(_obj(spec, "model")),
            annotations={str(k): str(v) for k, v in _obj(meta, "annotations").items()},
            raw_spec=spec,
        )

    @property
    def owner_reference(self) -> JSON:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def model_spec_hash(self) -> str:
        """Hash of everything that changes what a training run produces (schema v2).

        It hashes the typed values the parser made of the spec, with every default filled in
        the same way whether or not the API server applied it, so a CRD upgrade that adds a
        default retrains nothing. The quality gate, schedule, resources and placement are
        left out on purpose: changing them must not retrain. The `v2:` prefix names the
        schema of the hashed document; change it whenever that document changes shape.
        """
        text = json.dumps(self._training_inputs(), sort_keys=True, separators=(",", ":"))
        return SPEC_HASH_SCHEMA + ":" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def spec_hashes(self) -> tuple[str, str]:
        """(current, legacy): a completed run recorded under either hash is up to date.

        Operators before the v2 hash recorded `legacy_spec_hash` in
        status.training.completed.specHash; accepting it keeps an operator upgrade from
        retraining every guide at once.
        """
        return self.model_spec_hash(), self.legacy_spec_hash()

    def legacy_spec_hash(self) -> str:
        """The hash of operators before v2: raw spec subsets as stored, defaults included.

        Kept byte for byte so that hashes already in status still match; do not change it.
        """
        training = _obj(self.raw_spec, "training")
        # Pinning what is served changes nothing that training produces.
        model = self.raw_spec.get("model")
        if isinstance(model, Mapping) and "pinnedVersion" in model:
            model = {k: v for k, v in model.items() if k != "pinnedVersion"}
        relevant = {
            "data": self.raw_spec.get("data"),
            "model": model,
            "evaluation": training.get("evaluation"),
            "tune": training.get("tune"),
        }
        text = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _training_inputs(self) -> JSON:
        data = self.data
        catalog = None
        if data.catalog is not None:
            catalog = {
                "fromEvents": {str(k): str(v) for k, v in _obj(data.catalog, "fromEvents").items()},
                "contentWeight": _number(data.catalog.get("contentWeight", 0.3)),
            }
        evaluation = self.training.evaluation
        tune = self.training.tune
        return {
            "data": {
                "claim": data.claim,
                "path": data.path,
                **({"s3": data.s3.uri} if data.s3 else {}),
                "format": data.format,
                "columns": {str(k): str(v) for k, v in data.columns.items()},
                "onInvalid": data.on_invalid,
                "eventWeights": {k: float(v) for k, v in data.event_weights.items()},
                "halfLifeDays": _number(data.half_life_days),
                "minUserItems": data.min_user_items,
                "excludeItems": list(data.exclude_items),
                "catalog": catalog,
            },
            "model": {
                "algorithm": self.model.algorithm,
                "params": {k: _number(v) for k, v in self.model.params.items()},
            },
            "evaluation": {
                "k": int(evaluation["k"]),
                "split": str(evaluation["split"]),
                "testFraction": float(evaluation["testFraction"]),
                "seed": int(evaluation["seed"]),
            },
            "tune": {
                "enabled": bool(tune["enabled"]),
                "method": str(tune.get("method", "random")),
                "budgetSeconds": tune.get("budgetSeconds"),
                "trials": tune.get("trials"),
            },
        }

    @property
    def routing_salt(self) -> str:
        # Derived from the uid: stable for the life of the resource, new for a re-created one.
        return hashlib.sha256(f"routing:{self.uid}".encode()).hexdigest()[:16]
