"""Shared helpers for the chart tests: paths, rendering, the value sets."""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
from pathlib import Path

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "roster"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
RELEASE = "r1"
NAMESPACE = "roster-system"

# Every optional feature of the chart turned on, and every value that has an
# "empty means ..." default given a real one.
ALL_FEATURES: dict = {
    "image": {
        "tag": "0.1.0-rc1",
        "digest": "sha256:" + "ab" * 32,
        "pullPolicy": "Always",
    },
    "imagePullSecrets": [{"name": "regcred"}],
    "nameOverride": "registry",
    "roster": {
        "log": "roster_registry=debug,info",
        "dns": {"enabled": True, "domain": "example.internal", "ttl": 5},
        "grpc": {"enabled": True, "maxStreams": 4096},
        "extraArgs": ["--config=/etc/roster/roster.toml"],
    },
    "acl": {"enabled": True, "existingSecret": "roster-tokens"},
    "extraEnv": [
        {"name": "RUST_BACKTRACE", "value": "1"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "service": {"grpcPort": 18502, "annotations": {"example.com/team": "platform"}},
    "dnsService": {"clusterIP": "10.96.0.53", "annotations": {"example.com/dns": "roster"}},
    "persistence": {
        "storageClassName": "fast-ssd",
        "size": "5Gi",
        "annotations": {"example.com/backup": "daily"},
        "retentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
    },
    "serviceAccount": {"name": "roster-sa", "annotations": {"example.com/role": "none"}},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
                ]
            }
        }
    },
    "priorityClassName": "system-cluster-critical",
    "metrics": {
        "serviceMonitor": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"release": "prometheus"},
            "interval": "15s",
            "scrapeTimeout": "5s",
        }
    },
    "networkPolicy": {
        "enabled": True,
        "httpFrom": [{"namespaceSelector": {"matchLabels": {"roster.example.com/client": "true"}}}],
        "dnsFrom": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            },
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        ],
        "denyEgress": True,
    },
    "syncCatalog": {
        "enabled": True,
        "registry": "https://roster.example.internal:8500",
        "naming": "name-namespace",
        "defaultSync": False,
        "includeNotReady": False,
        "excludeNamespaces": ["kube-system"],
        "resync": "30s",
        "log": "roster_registry=debug",
        "extraArgs": ["--max-backoff=10s"],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "podAnnotations": {"example.com/sync": "yes"},
        "serviceAccountAnnotations": {"example.com/role": "reader"},
    },
}

# Named value sets every rendering test runs on.
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "all-features": ALL_FEATURES,
    "minimal": {
        "roster": {"dns": {"enabled": False}, "grpc": {"enabled": False}},
        "persistence": {"enabled": False},
        "serviceAccount": {"create": False},
        "podDisruptionBudget": {"enabled": False},
        "acl": {"enabled": False},
    },
    # Calls without a token may read (the token file's [anonymous] table).
    "anonymous-read": {"acl": {"anonymousPolicies": ["read", "write:canary-*"]}},
    # A Raft cluster with the chart's defaults, and one with everything it
    # depends on changed.
    "cluster-3": {"replicas": 3},
    "cluster-5-custom": {
        "replicas": 5,
        "clusterDomain": "k8s.example.org",
        "containerPorts": {"http": 9500, "grpc": 9502},
        "cluster": {"existingSecret": "raft-token"},
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "podDisruptionBudget": {"maxUnavailable": 2},
    },
    # Raft traffic over TLS with a peer certificate Secret (cert-manager's).
    "cluster-peer-tls": {
        "replicas": 3,
        "cluster": {"peerTls": {"enabled": True, "secretName": "roster-peer-tls"}},
    },
}


def merged(overrides: dict) -> dict:
    """The chart's values.yaml with ``overrides`` merged in (as Helm does)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(into: dict, extra: dict) -> dict:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)
        return into

    return merge(base, overrides)


@pytest.fixture(scope="session")
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(str(CHART))


def render(chart: helm_python.Chart, values: dict) -> dict[str, str]:
    """Renders the chart like `helm install r1 -n roster-system` would."""
    return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """Every Kubernetes object in a rendering, with the template it came from."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out


def find(objs: list[tuple[str, dict]], kind: str, name: str | None = None) -> dict:
    hits = [o for _, o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def secret_data(secret: dict) -> dict[str, str]:
    """The decoded ``data`` of a rendered Secret (the chart writes no stringData)."""
    assert "stringData" not in secret
    return {key: base64.b64decode(value, validate=True).decode() for key, value in secret["data"].items()}


@pytest.fixture(scope="session")
def roster_binary() -> Path:
    """The roster binary under test.

    tests/run.sh sets ROSTER_BIN to the binary `cargo test --workspace` has just
    built, and it is used as it is. Run alone, this builds
    <target dir>/debug/roster first when cargo is available (a no-op when it is up
    to date), so the test never exercises a stale build; the target dir honours
    CARGO_TARGET_DIR. No skip: a missing binary is a failure.
    """
    given = os.environ.get("ROSTER_BIN")
    if given:
        binary = Path(given)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
        if not target.is_absolute():
            target = REPO / target
        binary = target / "debug" / "roster"
        cargo = shutil.which("cargo")
        if cargo:
            subprocess.run(
                [cargo, "build", "--locked", "-p", "roster-cli", "--bin", "roster"],
                cwd=REPO,
                check=True,
            )
    assert binary.is_file() and os.access(binary, os.X_OK), (
        f"{binary} is missing: run `cargo build -p roster-cli` (or tests/run.sh)"
    )
    return binary


def pytest_sessionfinish(session, exitstatus):
    """No test may skip, silently or not: a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("tests/helm: tests were skipped; every test must run", red=True)
        session.exitstatus = 1
