"""Names shared by the operator's modules: the API of the resource, label and annotation keys.

Kept in one place so that builders, the apply layer and the tests agree on every key.
"""

from __future__ import annotations

GROUP = "shoppingguide.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ShoppingGuide"
PLURAL = "shoppingguides"

FIELD_MANAGER = "shopping-guide-operator"

# Labels on every owned object. `app.kubernetes.io/name` of the serving pods is what the Helm
# chart's PodMonitor selects, so it is fixed.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_GUIDE = f"{GROUP}/guide"
LABEL_RUN = f"{GROUP}/run"
LABEL_TRIGGER = f"{GROUP}/trigger"

APP_NAME = "shopping-guide-recommender"
MANAGED_BY = FIELD_MANAGER
COMPONENT_SERVING = "serving"
COMPONENT_TRAINING = "training"

# Set it to any new value to ask for a training run now.
ANNOTATION_RETRAIN = f"{GROUP}/retrain"
# Manual control of a canary: each acts once per distinct value (the plugin writes a
# timestamp); the handled value is remembered in status.manual, never written back here.
ANNOTATION_PROMOTE = f"{GROUP}/promote"
ANNOTATION_ABORT = f"{GROUP}/abort"
ANNOTATION_RETRY = f"{GROUP}/retry"
# `VERSION` or `VERSION@TOKEN`: make a version that was stable before serve again.
ANNOTATION_ROLLBACK_TO = f"{GROUP}/rollback-to"
# The hash of the model-affecting spec a training Job was started for.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"

# Paths inside the recommender containers.
DATA_MOUNT = "/data"
MODEL_MOUNT = "/models"
ROUTING_MOUNT = "/etc/shopping-guide/routing"
TERMINATION_LOG = "/dev/termination-log"
TRAINER_CONTAINER = "trainer"
SERVER_CONTAINER = "recommender"
# The user the recommender image runs as (recommender_image/Dockerfile).
RUN_AS_USER = 10001
