"""`holds`: what counts as drift, and what the API server's rewriting must not turn into."""

from __future__ import annotations

from shopping_guide_operator.compare import holds, merge_patch, quantity


def test_fields_added_by_others_are_not_drift() -> None:
    desired = {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "a"}]}}}}
    live = {
        "metadata": {"resourceVersion": "7"},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {
                "spec": {
                    "containers": [{"name": "a", "imagePullPolicy": "Always"}, {"name": "sidecar"}]
                }
            },
        },
    }
    assert holds(desired, live)


def test_a_changed_field_we_own_is_drift() -> None:
    assert not holds({"spec": {"replicas": 2}}, {"spec": {"replicas": 5}})
    assert not holds({"spec": {"args": ["a", "b"]}}, {"spec": {"args": ["a"]}})
    assert not holds({"a": {"b": 1}}, {})
    assert not holds({"a": [{"name": "x", "v": 1}]}, {"a": [{"name": "x", "v": 2}]})


def test_quantities_are_compared_by_value() -> None:
    assert holds({"cpu": "1000m", "memory": "1024Mi"}, {"cpu": "1", "memory": "1Gi"})
    assert not holds({"cpu": "500m"}, {"cpu": "1"})
    assert quantity("250m") == quantity("0.25")
    assert quantity("x1") is None


def test_empty_objects_may_come_back_absent() -> None:
    assert holds({"emptyDir": {}}, {})
    assert holds({"podSelector": {}}, {"podSelector": {}})


def test_types_matter_except_for_quantities() -> None:
    # A bool is never a number, nor the string the API server would print for it.
    assert not holds({"a": True}, {"a": 1})
    assert not holds({"a": 1}, {"a": True})
    assert not holds({"a": True}, {"a": "true"})
    # The API server returns a quantity we sent as a number as its canonical string, and
    # the other way round: the same value in either form holds, a different one does not.
    assert holds({"cpu": 1}, {"cpu": "1"})
    assert holds({"a": "1"}, {"a": 1})
    assert holds({"memory": "0.5Gi"}, {"memory": "512Mi"})
    assert not holds({"a": "1"}, {"a": 2})
    assert not holds({"a": "x"}, {"a": 1})


def test_quantity_parses_what_the_api_server_prints() -> None:
    assert quantity("1.5Ki") == 1536
    assert quantity("1e3") == quantity("1k") == 1000
    assert quantity(0.1) == quantity("100m")
    assert quantity("") is None
    assert quantity(True) is None
    assert quantity(None) is None


def test_merge_patch_nulls_removed_keys() -> None:
    old = {"a": 1, "b": {"c": 1, "d": 2}, "e": [1]}
    new = {"a": 1, "b": {"c": 1}, "e": [1, 2], "f": "x"}
    assert merge_patch(old, new) == {"b": {"d": None}, "e": [1, 2], "f": "x"}
    assert merge_patch(new, new) == {}
