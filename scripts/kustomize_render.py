#!/usr/bin/env python3
"""Renders a kustomization as `kubectl kustomize DIR` does, for the features deploy/ uses.

The kustomize binary is not in the package registries this project may use, so CI renders with
this instead: `resources` (files, and directories holding their own kustomization.yaml), with
the output in kustomize's legacy resource order (Namespace first, then what namespaced objects
need, workloads after). Any other kustomization field is an error rather than silently
ignored, so a manifest cannot start to depend on a feature this renderer does not render.

    python3 scripts/kustomize_render.py deploy/kubernetes/gateway > rendered.yaml
    python3 scripts/kustomize_render.py --check-all deploy/kubernetes   # every kustomization
"""
import argparse
import pathlib
import sys

import yaml

SUPPORTED = {"apiVersion", "kind", "resources"}

# kustomize's legacy ordering (api/resource/ordering in kustomize): these kinds first, in this
# order; webhook configurations last; everything else in between, by kind.
FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
         "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
         "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
         "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
         "StatefulSet", "CronJob", "PodDisruptionBudget"]
LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class RenderError(Exception):
    pass


def order(doc) -> tuple:
    kind = doc.get("kind", "")
    if kind in FIRST:
        return (0, FIRST.index(kind), "")
    if kind in LAST:
        return (2, LAST.index(kind), "")
    return (1, 0, kind)


def load(directory: pathlib.Path, seen=None) -> list:
    seen = set() if seen is None else seen
    directory = directory.resolve()
    if directory in seen:
        raise RenderError(f"{directory}: kustomization cycle")
    seen.add(directory)
    path = directory / "kustomization.yaml"
    if not path.exists():
        raise RenderError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(path.read_text()) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise RenderError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    if k.get("kind") != "Kustomization":
        raise RenderError(f"{path}: kind must be Kustomization")
    docs = []
    for entry in k.get("resources", []):
        target = (directory / entry).resolve()
        # kustomize's load restrictor: nothing from outside the kustomization's directory.
        if directory not in target.parents and target != directory:
            raise RenderError(f"{path}: {entry} is outside {directory}")
        if target.is_dir():
            docs.extend(load(target, seen))
        elif target.is_file():
            docs.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
        else:
            raise RenderError(f"{path}: {entry} does not exist")
    return docs


def render(directory: pathlib.Path) -> list:
    docs = load(directory)
    ids = [(d.get("kind"), d.get("metadata", {}).get("namespace"), d.get("metadata", {}).get("name"))
           for d in docs]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RenderError(f"{directory}: the same object twice: {sorted(map(str, dupes))}")
    return sorted(docs, key=order)


def kustomizations(root: pathlib.Path) -> list:
    return sorted(p.parent for p in root.rglob("kustomization.yaml"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=pathlib.Path)
    ap.add_argument("--check-all", action="store_true",
                    help="render every kustomization below DIRECTORY and check that every manifest "
                         "below it belongs to one")
    args = ap.parse_args()
    try:
        if args.check_all:
            roots = kustomizations(args.directory)
            used = set()
            for r in roots:
                render(r)
                k = yaml.safe_load((r / "kustomization.yaml").read_text())
                used |= {(r / e).resolve() for e in k.get("resources", [])}
            stray = [p for p in args.directory.rglob("*.yaml")
                     if p.name != "kustomization.yaml" and p.resolve() not in used]
            if stray:
                raise RenderError(f"manifests in no kustomization: {sorted(map(str, stray))}")
            print(f"kustomize_render: {len(roots)} kustomizations render; every manifest is in one")
            return
        yaml.safe_dump_all(render(args.directory), sys.stdout, sort_keys=False)
    except RenderError as e:
        raise SystemExit(f"kustomize_render: {e}")


if __name__ == "__main__":
    main()
