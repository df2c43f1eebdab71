"""A small valid releases repo as a dict of files, for tests that break one thing at a time."""

from __future__ import annotations

import textwrap
from pathlib import Path


def _d(text: str) -> bytes:
    return textwrap.dedent(text).lstrip("\n").encode()


def minimal_repo() -> dict[str, bytes]:
    return {
        "applications/ref/application.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Application
            metadata:
              name: ref
            spec:
              owner: team-ref
              components:
                - name: api
                  target: kubernetes
                  templates: [templates/deployment.yaml]
            """),
        "applications/ref/templates/deployment.yaml": _d("""
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: ${app.name}
              namespace: ${params.namespace}
            data:
              version: "${release.version}"
            """),
        "applications/famille/application.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Application
            metadata:
              name: famille
            spec:
              owner: team-famille
              dependsOn: [ref]
              components:
                - name: batch
                  target: aix
                  artifact: {name: FAMBATCH, type: cobol}
            """),
        "releases/ref/3.0.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Release
            metadata:
              name: ref-3.0
            spec:
              application: ref
              version: 3.0
              components:
                api: {image: "registry.example.org/ref/api:3.0"}
            """),
        "releases/ref/3.10.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Release
            metadata:
              name: ref-3.10
            spec:
              application: ref
              version: 3.10
              components:
                api: {image: "registry.example.org/ref/api:3.10"}
            """),
        "releases/famille/2.4.0.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Release
            metadata:
              name: famille-2.4.0
            spec:
              application: famille
              version: 2.4.0
              components:
                batch: {artifact: fambatch-2.4.0.tar.gz}
              requires:
                - application: ref
                  version: ">=3.2"
            """),
        "stages/dev.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Stage
            metadata:
              name: dev
            spec:
              releases:
                ref: 3.10
                famille: 2.4.0
            """),
        "stages/production.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Stage
            metadata:
              name: production
            spec:
              promotesFrom: dev
              soak: 24h
              releases:
                ref: 3.0
            """),
        "environments/branches.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: EnvironmentSet
            metadata:
              name: branches
            spec:
              generator:
                list:
                  - {branch: lille, region: nord}
                  - {branch: rennes, region: ouest}
                matrix:
                  stage: [dev, production]
              template:
                metadata:
                  name: "${branch}-${stage}"
                  labels: {branch: "${branch}", region: "${region}", stage: "${stage}"}
                spec:
                  stage: "${stage}"
                  targets: {kubernetes: "k8s-${region}", aix: "aix-${branch}"}
                  parameters: {namespace: "${branch}-${stage}", replicas: 2}
            """),
        "environments/shared.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: Environment
            metadata:
              name: shared-production
              labels: {scope: shared}
            spec:
              stage: production
              targets: {kubernetes: k8s-shared}
              parameters: {namespace: shared}
            """),
        "freezes/year-end.yaml": _d("""
            apiVersion: reconciler.io/v1
            kind: FreezeWindow
            metadata:
              name: year-end
            spec:
              scope: {stages: [production]}
              absolute:
                - {start: "2025-12-19T18:00:00+01:00", end: "2026-01-05T08:00:00+01:00"}
              recurring:
                - {cron: "0 2 29 2 *", duration: 1m, timezone: Europe/Paris}  # leap days only: never in the way of tests
            """),
    }


def write_repo(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
