"""The Secret with the key that signs recommendation ids, shared by a guide's serving pods.

Every serving pod signs the ids it issues with this key and verifies the ids feedback brings
back, so any pod attributes feedback to the version and cohort that served the list. The key
is made once (reconcile passes it in: builders stay pure) and never rewritten; deleting the
Secret rotates it. Owned by the guide, it goes with the guide.
"""

from __future__ import annotations

import base64

from ..constants import COMPONENT_SERVING
from ..spec import JSON, Guide
from .common import metadata

KEY_FILE = "key"
ATTRIBUTION_MOUNT = "/etc/shopping-guide/attribution"


def attribution_secret_name(guide: Guide) -> str:
    return f"{guide.name}-attribution"


def attribution_key_path() -> str:
    return f"{ATTRIBUTION_MOUNT}/{KEY_FILE}"


def build_attribution_secret(guide: Guide, key: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(guide, attribution_secret_name(guide), COMPONENT_SERVING),
        "type": "Opaque",
        "data": {KEY_FILE: base64.b64encode(key.encode()).decode()},
    }
