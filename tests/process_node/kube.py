"""The few API calls the agent makes, on plain dicts (JSON as the API server sends it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

TIMEOUT = 10.0


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class Api:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        # Typed as Any: plain dicts go in and raw responses come out (_preload_content=False).
        self.core: Any = client.CoreV1Api(api)

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        """The pods bound to `node` and the list's resourceVersion."""
        data = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}",
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
        )
        return list(data.get("items") or []), str(data["metadata"].get("resourceVersion", ""))

    def watch_pods(
        self, node: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        response = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=False,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=timeout + TIMEOUT,
        )
        try:
            lines: Iterator[str] = iter_resp_lines(response)  # type: ignore[no-untyped-call]
            for line in lines:
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise ApiException(status=event["object"].get("code"), reason="watch error")
                yield str(event["type"]), dict(event["object"])
        finally:
            response.release_conn()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap, Secret, PersistentVolumeClaim or PersistentVolume; None when absent."""
        calls = {
            "configmap": self.core.read_namespaced_config_map,
            "secret": self.core.read_namespaced_secret,
            "persistentvolumeclaim": self.core.read_namespaced_persistent_volume_claim,
        }
        try:
            if kind == "persistentvolume":
                response = self.core.read_persistent_volume(
                    name, _preload_content=False, _request_timeout=TIMEOUT
                )
            else:
                response = calls[kind](
                    name, namespace, _preload_content=False, _request_timeout=TIMEOUT
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            name, namespace, {"status": status}, _request_timeout=TIMEOUT
        )

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """What kubelet does once the containers are gone: delete with grace 0, for this uid."""
        body = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
        )
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body, _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def token(self, namespace: str, service_account: str, pod: dict[str, Any], spec: Any) -> str:
        """A TokenRequest bound to the pod, as the projected serviceAccountToken source asks."""
        meta = pod["metadata"]
        body: dict[str, Any] = {
            "spec": {
                "audiences": [spec["audience"]] if spec.get("audience") else None,
                "expirationSeconds": int(spec.get("expirationSeconds") or 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            }
        }
        response = self.core.create_namespaced_service_account_token(
            service_account, namespace, body, _preload_content=False, _request_timeout=TIMEOUT
        )
        return str(_json(response)["status"]["token"])
