"""How a pod reaches the model store and the events: a claim's volume, or an object store's
location (flags), credentials (env from the guide's Secret) and CA bundle (a ConfigMap)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import DATA_MOUNT, MODEL_MOUNT
from ..spec import JSON, Guide, S3Location

S3_CA_MOUNT = "/etc/shopping-guide/s3-ca"
EVENTS_S3_CA_MOUNT = "/etc/shopping-guide/events-s3-ca"
MODEL_CACHE_MOUNT = "/var/cache/shopping-guide"


@dataclass(frozen=True)
class Wiring:
    args: list[str]
    env: list[JSON] = field(default_factory=list)
    volumes: list[JSON] = field(default_factory=list)
    mounts: list[JSON] = field(default_factory=list)


def _s3(location: S3Location, flag: str, env_prefix: str, volume: str, mount: str) -> Wiring:
    """`flag` names the location (`--model-store`, `--events`); the options of the events
    carry an `events-` prefix, their credentials `EVENTS_`, so both may differ."""
    options = "--events-s3" if flag == "--events" else "--s3"
    args = [flag, location.uri, f"{options}-region", location.region]
    if location.endpoint:
        args += [f"{options}-endpoint", location.endpoint]
    env = [
        {
            "name": f"{env_prefix}{name}",
            "valueFrom": {"secretKeyRef": {"name": location.secret, "key": key}},
        }
        for name, key in (
            ("AWS_ACCESS_KEY_ID", location.access_key_key),
            ("AWS_SECRET_ACCESS_KEY", location.secret_key_key),
        )
    ]
    if location.ca_config_map is None:
        return Wiring(args, env)
    args += [f"{options}-ca-file", f"{mount}/{location.ca_key}"]
    return Wiring(
        args,
        env,
        [{"name": volume, "configMap": {"name": location.ca_config_map}}],
        [{"name": volume, "mountPath": mount, "readOnly": True}],
    )


def model_store(guide: Guide, *, writes: bool, serves: bool = False) -> Wiring:
    """The trainer and erasure Jobs write; serving pods read (through a cache, from S3)."""
    store = guide.model_store
    if store.s3 is None:
        read_only = {} if writes else {"readOnly": True}
        return Wiring(
            ["--model-store", MODEL_MOUNT],
            volumes=[
                {"name": "models", "persistentVolumeClaim": {"claimName": store.claim, **read_only}}
            ],
            mounts=[{"name": "models", "mountPath": MODEL_MOUNT, **read_only}],
        )
    wiring = _s3(store.s3, "--model-store", "", "s3-ca", S3_CA_MOUNT)
    if not serves:
        return wiring
    return Wiring(
        [*wiring.args, "--model-cache", MODEL_CACHE_MOUNT],
        wiring.env,
        [
            *wiring.volumes,
            {"name": "model-cache", "emptyDir": {"sizeLimit": store.cache_limit}},
        ],
        [*wiring.mounts, {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT}],
    )


def events(guide: Guide) -> Wiring:
    data = guide.data
    if data.s3 is not None:
        return _s3(data.s3, "--events", "EVENTS_", "events-s3-ca", EVENTS_S3_CA_MOUNT)
    return Wiring(
        ["--events", f"{DATA_MOUNT}/{data.path}"],
        volumes=[
            {"name": "data", "persistentVolumeClaim": {"claimName": data.claim, "readOnly": True}}
        ],
        mounts=[{"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}],
    )
