"""Render a kustomization without kubectl: the few features deploy/kubernetes uses (resources
as files or folders, namespace, labels, images, configMapGenerator literals, secretGenerator
files, patches by path as strategic merges that merge lists of named items by name). Where
kubectl is installed the tests check that this gives what `kubectl kustomize` gives."""

import base64
import copy
import os

import yaml

CLUSTER_WIDE = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def render(folder):
    """The objects of the kustomization in folder, in kustomize's order of kinds."""
    with open(os.path.join(folder, "kustomization.yaml"), encoding="utf-8") as f:
        kust = yaml.safe_load(f)
    objs = []
    for res in kust.get("resources", []):
        path = os.path.join(folder, res)
        if os.path.isdir(path):
            objs += render(path)
        else:
            with open(path, encoding="utf-8") as f:
                objs += [d for d in yaml.safe_load_all(f) if d]
    for gen in kust.get("configMapGenerator", []):
        data = dict(item.split("=", 1) for item in gen.get("literals", []))
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": data})
    for gen in kust.get("secretGenerator", []):
        data = {}
        for item in gen.get("files", []):
            key, _, path = item.partition("=") if "=" in item else (item, "", item)
            with open(os.path.join(folder, path), "rb") as f:
                data[key] = base64.b64encode(f.read()).decode()
        objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"]},
                     "type": "Opaque", "data": data})
    for patch in kust.get("patches", []):
        with open(os.path.join(folder, patch["path"]), encoding="utf-8") as f:
            change = yaml.safe_load(f)
        (target,) = [o for o in objs if (o["kind"], o["metadata"]["name"]) ==
                     (change["kind"], change["metadata"]["name"])]
        merge(target, change)
    for obj in objs:
        meta = obj["metadata"]
        if "namespace" in kust and obj["kind"] not in CLUSTER_WIDE:
            meta["namespace"] = kust["namespace"]
        for entry in kust.get("labels", []):
            meta.setdefault("labels", {}).update(entry["pairs"])
        for image in kust.get("images", []):
            for c in containers(obj):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    order = ["Namespace", "ConfigMap", "Secret", "Service", "DaemonSet"]
    return sorted(objs, key=lambda o: (order.index(o["kind"]) if o["kind"] in order else 99,
                                       o["metadata"]["name"]))


def merge(base, change):
    """Strategic merge: dicts key by key, lists of dicts with `name` item by name."""
    for key, value in change.items():
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merge(old, value)
        elif isinstance(old, list) and value and all(isinstance(v, dict) and "name" in v
                                                     for v in old + value):
            by_name = {v["name"]: v for v in old}
            for v in value:
                if v["name"] in by_name:
                    merge(by_name[v["name"]], v)
                else:
                    old.append(copy.deepcopy(v))
        else:
            base[key] = copy.deepcopy(value)


def containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])
