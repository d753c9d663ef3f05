"""Every (API group, resource, verb) the operator needs: what operator/rbac/role.yaml grants.

Derived from the tables beside the calls (informers.WATCHED and INFORMER_VERBS for the reads,
informers.WRITES and METHOD_VERBS for the writes) and from what kopf itself does (below);
tests/unit/test_rbac.py holds role.yaml equal to it, so a new call without its grant, or a
grant without its call, fails there.
"""

from __future__ import annotations

from .constants import GROUP, PLURAL
from .informers import INFORMER_VERBS, METHOD_VERBS, WATCHED, WRITES
from .kube import PLURALS, group_of

Permission = tuple[str, str, str]  # (API group, resource, verb)

# kopf's own requests, for this operator's handlers (one daemon on the guides, no child
# watches) and settings (finalizer and annotation storage on the guide, core/v1 Events):
KOPF: dict[tuple[str, str], tuple[str, ...]] = {
    # The guides' watch-stream, and the finalizer and progress annotations it patches.
    (GROUP, PLURAL): ("list", "watch", "patch"),
    # Events posted by kopf.event() (core/v1, never events.k8s.io).
    ("", "events"): ("create",),
    # Resource observation: new or changed CRDs are noticed (kopf warns without it).
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch"),
    # Namespace observation for --namespace patterns (kopf warns without it).
    ("", "namespaces"): ("list", "watch"),
    # Peering (--peering NAME): the peering objects' watch-stream and kopf's keep-alive patches.
    ("kopf.dev", "kopfpeerings"): ("list", "watch", "patch"),
    ("kopf.dev", "clusterkopfpeerings"): ("list", "watch", "patch"),
}
# Owner references with blockOwnerDeletion (spec.owner_reference) need update on the owner's
# finalizers where the OwnerReferencesPermissionEnforcement admission plugin runs.
OWNER_REFERENCES: dict[tuple[str, str], tuple[str, ...]] = {
    (GROUP, f"{PLURAL}/finalizers"): ("update",),
}


def group_and_resource(kind: str) -> tuple[str, str]:
    return group_of(kind), PLURALS[kind]


def required() -> set[Permission]:
    needed: set[Permission] = set()
    for kind in WATCHED:
        group, resource = group_and_resource(kind)
        needed |= {(group, resource, verb) for verb in INFORMER_VERBS}
    for kind, methods in WRITES.items():
        group, resource = group_and_resource(kind)
        for method in methods:
            # The status subresource is a resource of its own to RBAC.
            target = f"{resource}/status" if method == "patch_status" else resource
            needed |= {(group, target, verb) for verb in METHOD_VERBS[method]}
    for table in (KOPF, OWNER_REFERENCES):
        for (group, resource), verbs in table.items():
            needed |= {(group, resource, verb) for verb in verbs}
    return needed
