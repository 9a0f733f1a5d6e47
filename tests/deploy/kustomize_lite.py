"""A small kustomize: the subset deploy/k8s uses, in Python, so overlays render offline.

No kustomize is installable here from PyPI or Debian (Debian's kubernetes-client is
kubectl 1.20 with kustomize 2.0). Supported, with kustomize v5's semantics:
``resources`` (files and directories holding a kustomization.yaml), ``namespace``
(namespaced kinds only), ``images`` (newName / newTag), ``replicas``, and
``patches`` whose target selects by group / version / kind / name: inline or file
JSON 6902 operations (add, remove, replace, test), and an inline strategic-merge
patch that only deletes (``$patch: delete``). Anything else in a kustomization is
an error, so the overlays cannot silently outgrow this renderer.
``tests/deploy/test_k8s.py`` also renders with ``kubectl kustomize`` where kubectl
exists and requires the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


class KustomizeError(ValueError):
    pass


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(directory: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        p = (directory / res).resolve()
        objs.extend(build(p) if p.is_dir() else load_docs(p))
    seen: set[tuple[str, str, str]] = set()
    for o in objs:
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"duplicate resource {key}")
        seen.add(key)
    for patch in k.get("patches", []):
        objs = _apply_patch(directory, patch, objs)
    for img in k.get("images", []):
        for o in objs:
            for c in _containers(o):
                _set_image(c, img)
    for rep in k.get("replicas", []):
        hits = [o for o in objs if o["kind"] in WORKLOADS and o["metadata"]["name"] == rep["name"]]
        if not hits:
            raise KustomizeError(f"replicas: no workload named {rep['name']}")
        for o in hits:
            o["spec"]["replicas"] = rep["count"]
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def _containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    spec = o.get("spec", {})
    pod = spec.get("template", {}).get("spec") if o["kind"] in WORKLOADS else None
    if o["kind"] == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    if not pod:
        return []
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _set_image(c: dict[str, Any], img: dict[str, Any]) -> None:
    ref = c["image"]
    name, sep, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    else:
        tag = ""
    if name != img["name"]:
        return
    name = img.get("newName", name)
    if "newTag" in img:
        c["image"] = f"{name}:{img['newTag']}"
    elif "digest" in img:
        c["image"] = f"{name}@{img['digest']}"
    else:
        c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if sep else "")


def _matches(o: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = o["apiVersion"].rpartition("/")
    want = {"group": group, "version": version, "kind": o["kind"], "name": o["metadata"]["name"]}
    extra = set(target) - set(want)
    if extra:
        raise KustomizeError(f"unsupported patch target fields {sorted(extra)}")
    return all(want[f] == v for f, v in target.items())


def _apply_patch(
    directory: Path, patch: dict[str, Any], objs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    body = yaml.safe_load(
        (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    )
    if isinstance(body, dict):  # strategic merge: only `$patch: delete` is supported
        if body.get("$patch") != "delete" or set(body) - {
            "apiVersion",
            "kind",
            "metadata",
            "$patch",
        }:
            raise KustomizeError("only `$patch: delete` strategic-merge patches are supported")
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        kept = [o for o in objs if not _matches(o, target)]
        if len(kept) == len(objs):
            raise KustomizeError(f"delete patch matched nothing: {target}")
        return kept
    hits = [o for o in objs if _matches(o, patch.get("target", {}))]
    if not hits:
        raise KustomizeError(f"patch target matched nothing: {patch.get('target')}")
    for o in hits:
        for op in body:
            _json_op(o, op)
    return objs


def _json_op(doc: dict[str, Any], op: dict[str, Any]) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        idx = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(idx, copy.deepcopy(op["value"]))
        elif kind == "replace":
            parent[idx] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del parent[idx]
        elif kind == "test":
            if parent[idx] != op["value"]:
                raise KustomizeError(f"test failed at {op['path']}: {parent[idx]!r}")
        else:
            raise KustomizeError(f"unsupported op {kind}")
        return
    if kind == "add":
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        if last not in parent:
            raise KustomizeError(f"replace of a missing path {op['path']}")
        parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[last]
    elif kind == "test":
        if parent.get(last) != op["value"]:
            raise KustomizeError(f"test failed at {op['path']}: {parent.get(last)!r}")
    else:
        raise KustomizeError(f"unsupported op {kind}")
