"""The chart: lint, render, Kubernetes schemas, yamllint, the values schema,
and its agreement with the Dockerfile, Cargo.toml and the chart README."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    ALL_FEATURES,
    CHART,
    NAMESPACE,
    REPO,
    SCHEMAS,
    VALUE_SETS,
    find,
    manifests,
    merged,
    render,
    secret_data,
)

# The oldest Kubernetes the chart supports (kubeVersion in Chart.yaml) and the
# newest one kubernetes-validate 1.37.0 ships schemas for.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]


def test_app_version_is_the_workspace_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == cargo["workspace"]["package"]["version"]
    assert chart["kubeVersion"] == ">=1.27.0-0", "update KUBE_VERSIONS with kubeVersion"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_has_no_errors_or_warnings(value_set):
    report = helm_python.lint(str(CHART), VALUE_SETS[value_set], strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert report["total_charts_linted"] == 1
    # Severity 2 is a warning, 3 an error; 1 (info, "icon is recommended") is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_render_defaults(chart):
    objs = manifests(render(chart, {}))
    kinds = sorted(o["kind"] for _, o in objs)
    assert kinds == sorted(
        ["StatefulSet", "Service", "Service", "Service", "PodDisruptionBudget", "ServiceAccount", "Pod", "Secret"]
    ), kinds

    sts = find(objs, "StatefulSet", "r1-roster")
    spec = sts["spec"]
    assert spec["replicas"] == 1
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "r1-roster-headless"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["/usr/local/bin/roster", "serve"]
    args = container["args"]
    assert "--http-addr=0.0.0.0:8500" in args
    assert "--dns-addr=0.0.0.0:8600" in args
    assert "--grpc-addr=0.0.0.0:8502" in args
    assert "--max-xds-streams=16384" in args
    assert "--no-grpc" not in args
    assert "--data-dir=/var/lib/roster" in args
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports == {("http", 8500, "TCP"), ("dns-udp", 8600, "UDP"), ("dns-tcp", 8600, "TCP"), ("grpc", 8502, "TCP")}

    # The data dir is the claim from the volumeClaimTemplate.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert {"name": "data", "mountPath": "/var/lib/roster"} in container["volumeMounts"]
    # ACLs are on by default: the only pod volume is the token file's Secret.
    assert [v["name"] for v in pod["volumes"]] == ["acl"]
    assert args[-2:] == ["--acl=true", "--acl-tokens=/etc/roster/acl/tokens.toml"]

    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]

    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "r1-roster"

    http = find(objs, "Service", "r1-roster")["spec"]
    assert http["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"], p["protocol"], p["appProtocol"]) for p in http["ports"]] == [
        ("http", 8500, "http", "TCP", "http"),
        ("grpc", 8502, "grpc", "TCP", "grpc"),
    ]

    dns = find(objs, "Service", "r1-roster-dns")["spec"]
    assert dns["type"] == "ClusterIP"
    assert "clusterIP" not in dns
    assert [(p["port"], p["targetPort"], p["protocol"]) for p in dns["ports"]] == [
        (53, "dns-udp", "UDP"),
        (53, "dns-tcp", "TCP"),
    ]

    headless = find(objs, "Service", "r1-roster-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert [p["name"] for p in headless["ports"]] == ["http", "dns-udp", "dns-tcp", "grpc"]

    pdb = find(objs, "PodDisruptionBudget")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": spec["selector"]}

    # Every selector picks exactly the StatefulSet's pods.
    pod_labels = spec["template"]["metadata"]["labels"]
    for svc in (http, dns, headless):
        assert svc["selector"].items() <= pod_labels.items()


def test_render_every_optional_feature(chart):
    rendered = render(chart, ALL_FEATURES)
    objs = manifests(rendered)
    kinds = sorted(o["kind"] for _, o in objs)
    assert kinds == sorted(
        ["StatefulSet", "Service", "Service", "Service", "PodDisruptionBudget", "ServiceAccount", "Pod",
         "ServiceMonitor", "NetworkPolicy", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    ), kinds  # no Secret: acl.existingSecret names the user's

    sts = find(objs, "StatefulSet", "r1-registry")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/roster-registry/roster@sha256:" + "ab" * 32
    assert container["args"][-3:] == [
        "--acl=true", "--acl-tokens=/etc/roster/acl/tokens.toml", "--config=/etc/roster/roster.toml"
    ]
    (acl_volume,) = [v for v in pod["volumes"] if v["name"] == "acl"]
    assert acl_volume["secret"]["secretName"] == "roster-tokens"
    assert "--dns-domain=example.internal" in container["args"]
    assert "--dns-ttl=5" in container["args"]
    assert "--max-xds-streams=4096" in container["args"]
    http_svc = find(objs, "Service", "r1-registry")["spec"]
    assert [(p["name"], p["port"]) for p in http_svc["ports"]] == [("http", 8500), ("grpc", 18502)]
    assert container["env"] == ALL_FEATURES["extraEnv"]
    assert pod["serviceAccountName"] == "roster-sa"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"

    dns = find(objs, "Service", "r1-registry-dns")["spec"]
    assert dns["clusterIP"] == "10.96.0.53"

    monitor = find(objs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "scheme": "http", "interval": "15s", "scrapeTimeout": "5s"}
    ]

    policy = find(objs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    http_rule, dns_rule = policy["ingress"]
    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    assert http_rule["from"] == ALL_FEATURES["networkPolicy"]["httpFrom"]
    assert dns_rule["ports"] == [{"port": "dns-udp", "protocol": "UDP"}, {"port": "dns-tcp", "protocol": "TCP"}]
    assert dns_rule["from"] == ALL_FEATURES["networkPolicy"]["dnsFrom"]

    notes = rendered["roster/templates/NOTES.txt"]
    assert "forward example.internal. 10.96.0.53" in notes
    assert f"r1-registry.{NAMESPACE}.svc:18502" in notes

    sync = find(objs, "Deployment", "r1-registry-sync-k8s")["spec"]["template"]
    (sync_container,) = sync["spec"]["containers"]
    assert sync_container["image"] == container["image"]
    assert sync_container["args"] == [
        "--registry=https://roster.example.internal:8500",
        "--naming=name-namespace",
        "--default-sync=false",
        "--include-not-ready=false",
        "--exclude-namespaces=kube-system",
        "--resync=30s",
        "--log=roster_registry=debug",
        "--max-backoff=10s",
    ]
    assert sync_container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "roster-tokens", "key": "admin-token"}
    # Helm merges maps: the default limit stays.
    assert sync_container["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}}
    assert sync["metadata"]["annotations"] == {"example.com/sync": "yes"}
    sync_sa = find(objs, "ServiceAccount", "r1-registry-sync-k8s")
    assert sync_sa["metadata"]["annotations"] == {"example.com/role": "reader"}


def test_render_minimal(chart):
    """DNS off, no claim, no ServiceAccount, no PDB: what remains is consistent."""
    objs = manifests(render(chart, VALUE_SETS["minimal"]))
    kinds = sorted(o["kind"] for _, o in objs)
    assert kinds == sorted(["StatefulSet", "Service", "Service", "Pod"]), kinds
    sts = find(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--no-dns" in container["args"]
    assert not any(a.startswith("--dns-") for a in container["args"])
    assert "--no-grpc" in container["args"]
    assert not any(a.startswith(("--grpc-", "--max-xds-")) for a in container["args"])
    assert [p["name"] for p in container["ports"]] == ["http"]
    for svc in (o for _, o in objs if o["kind"] == "Service"):
        assert [p["name"] for p in svc["spec"]["ports"]] == ["http"], svc["metadata"]["name"]
    assert "volumeClaimTemplates" not in sts["spec"]
    assert "persistentVolumeClaimRetentionPolicy" not in sts["spec"]
    assert pod["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert pod["serviceAccountName"] == "default"
    assert not any(a.startswith("--acl") for a in container["args"])
    test_pod = find(objs, "Pod")["spec"]
    assert [c["name"] for c in test_pod["initContainers"]] == ["register"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_manifests_validate_against_kubernetes_schemas(chart, value_set, kube_version):
    objs = manifests(render(chart, VALUE_SETS[value_set]))
    assert objs
    checked = []
    for path, obj in objs:
        where = f"{path}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # Not a Kubernetes kind: checked against the operator's CRD fields
            # the chart uses (tests/helm/schemas), with unknown fields refused.
            schema = json.loads((SCHEMAS / f"{obj['kind'].lower()}-monitoring.coreos.com-v1.json").read_text())
            jsonschema.Draft202012Validator(schema).validate(obj)
        else:
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} is invalid for Kubernetes {kube_version}: {'.'.join(map(str, e.path))}: {e.message}")
        checked.append(where)
    assert len(checked) == len(objs)


YAMLLINT_CONFIG = REPO / "tests/helm/yamllint.yaml"


def yamllint(*paths, config: str | None = None) -> subprocess.CompletedProcess:
    how = ["-d", config] if config else ["-c", str(YAMLLINT_CONFIG)]
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", *how, *map(str, paths)],
        capture_output=True,
        text=True,
    )


def test_yamllint_chart_files():
    # templates/ holds Go templates ({{ ... }} is not YAML), so they are linted
    # as rendered, in the next test.
    result = yamllint(CHART / "Chart.yaml", CHART / "values.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_yamllint_rendered_manifests(chart, value_set, tmp_path):
    files = []
    for path, text in render(chart, VALUE_SETS[value_set]).items():
        if path.endswith(".yaml") and text.strip():
            out = tmp_path / path.replace("/", "__")
            out.write_text(text)
            files.append(out)
    assert len(files) >= 4
    # The same rules, less line-length: rendered lines carry the user's values
    # (an image digest alone is 71 characters), which the chart cannot wrap.
    result = yamllint(*files, config=f"{{extends: {YAMLLINT_CONFIG}, rules: {{line-length: disable}}}}")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "1"}, "/replicas': got string, want integer"),
        ({"replicas": 2}, "at '/replicas': value must be one of 1, 3, 5"),
        ({"replicas": 4}, "at '/replicas': value must be one of 1, 3, 5"),
        ({"replicas": 0}, "at '/replicas': value must be one of 1, 3, 5"),
        ({"replicas": 3, "persistence": {"enabled": False}},
         "replicas above 1 needs persistence.enabled=true: each Raft node keeps its log"),
        ({"replicas": 5, "persistence": {"enabled": False}}, "replicas above 1 needs persistence.enabled=true"),
        ({"clusterDomain": "Cluster_Local"}, "/clusterDomain"),
        ({"clusterDomain": None}, "missing property 'clusterDomain'"),
        ({"cluster": {"existingSecret": "Raft_Token"}}, "/cluster/existingSecret"),
        ({"cluster": {"token": "s3cret"}}, "additional properties 'token' not allowed"),
        ({"cluster": {"peerTls": {"enabled": True}}}, "cluster.peerTls.enabled needs cluster.peerTls.secretName"),
        ({"cluster": {"peerTls": {"enabled": "yes"}}}, "/cluster/peerTls/enabled': got string, want boolean"),
        ({"cluster": {"peerTls": {"secretName": "Peer_Certs"}}}, "'Peer_Certs' does not match pattern"),
        ({"cluster": {"peerTls": {"cert": "x"}}}, "additional properties 'cert' not allowed"),
        ({"replica": 1}, "additional properties 'replica' not allowed"),
        ({"image": {"tga": "latest"}}, "additional properties 'tga' not allowed"),
        ({"roster": {"dns": {"ttl": -1}}}, "/roster/dns/ttl"),
        ({"roster": {"leaseGrace": "soon"}}, "/roster/leaseGrace"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"podDisruptionBudget": {"minAvailable": 1}}, "oneOf"),
        ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
        ({"networkPolicy": {"httpFrom": [{"podSelecter": {}}]}}, "additional properties 'podSelecter' not allowed"),
        ({"acl": {"enabled": "yes"}}, "/acl/enabled': got string, want boolean"),
        ({"acl": {"enabled": 1}}, "/acl/enabled': got number, want boolean"),
        ({"acl": {"existingSecret": 5}}, "/acl/existingSecret': got number, want string"),
        ({"acl": {"existingSecret": "My_Tokens"}}, "'My_Tokens' does not match pattern"),
        ({"acl": {"tokens": []}}, "additional properties 'tokens' not allowed"),
        ({"acl": {"anonymousPolicies": ["admin"]}}, "'admin' does not match pattern"),
        ({"acl": {"anonymousPolicies": ["write:"]}}, "'write:' does not match pattern"),
        ({"acl": {"anonymousPolicies": ['write:a"b']}}, "does not match pattern"),
        ({"acl": {"anonymousPolicies": ["Read"]}}, "'Read' does not match pattern"),
        ({"acl": {"anonymousPolicies": ["read", "read"]}}, "items at 0 and 1 are equal"),
        ({"acl": {"anonymousPolicies": "read"}}, "/acl/anonymousPolicies': got string, want array"),
        ({"acl": None}, "missing property 'acl'"),
        ({"roster": {"grpc": {"enabled": "yes"}}}, "/roster/grpc/enabled': got string, want boolean"),
        ({"roster": {"grpc": {"maxStreams": 0}}}, "/roster/grpc/maxStreams"),
        ({"roster": {"grpc": {"maxStreams": 10000001}}}, "/roster/grpc/maxStreams"),
        ({"roster": {"grpc": {"maxStreams": "16384"}}}, "/roster/grpc/maxStreams': got string, want integer"),
        ({"roster": {"grpc": {"port": 8502}}}, "additional properties 'port' not allowed"),
        ({"roster": {"grpc": None}}, "missing property 'grpc'"),
        ({"containerPorts": {"grpc": 0}}, "/containerPorts/grpc"),
        ({"containerPorts": {"grpc": 65536}}, "/containerPorts/grpc"),
        ({"service": {"grpcPort": "8502"}}, "/service/grpcPort': got string, want integer"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_schema_rejects_bad_values(chart, values, message):
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(chart, values)
    assert message in str(err.value)
    # Helm checks the schema on lint, install and upgrade alike.
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema(values)


def test_schema_accepts_the_value_sets(chart):
    for values in VALUE_SETS.values():
        chart.validate_schema(values)
    chart.validate_schema({"podDisruptionBudget": {"maxUnavailable": "100%"}})


def test_pod_disruption_budget_can_use_min_available(chart):
    """minAvailable replaces maxUnavailable when the default is removed with null."""
    values = {"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": None}}
    pdb = find(manifests(render(chart, values)), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    kubernetes_validate.validate(pdb, "1.27.0", strict=True)


def test_replicas_schema_allows_the_raft_sizes():
    schema = json.loads((CHART / "values.schema.json").read_text())
    replicas = schema["properties"]["replicas"]
    assert replicas["type"] == "integer" and replicas["enum"] == [1, 3, 5]
    assert "Raft" in replicas["description"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicas"] == 1, "one pod stays the default"
    assert values["clusterDomain"] == schema["properties"]["clusterDomain"]["default"] == "cluster.local"
    assert values["cluster"] == {"existingSecret": "", "peerTls": {"enabled": False, "secretName": ""}}


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not key.endswith(("Selector", "Annotations", "Labels")) and key not in {
            "annotations", "labels", "resources", "podSecurityContext", "securityContext", "affinity"
        }:
            yield from _leaves(value, path + ".")
        else:
            yield path


def test_schema_closes_every_object():
    """Every object the schema describes refuses unknown keys (additionalProperties
    false), except string maps and the Kubernetes pass-through fields below."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    passthrough = {"global", "podSelector", "namespaceSelector", "valueFrom",
                   "nodeAffinity", "podAffinity", "podAntiAffinity"}

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and path.split(".")[-1] not in passthrough:
                assert "additionalProperties" in node, f"{path} accepts any key"
                ap = node["additionalProperties"]
                assert ap is False or ap == {"type": "string"}, f"{path}: additionalProperties {ap}"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "$")


def test_chart_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    table = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    values = set(_leaves(yaml.safe_load((CHART / "values.yaml").read_text())))
    assert values - table == set(), "values missing from the README table"
    assert table - values == set(), "README table lists values that do not exist"
    assert "forward roster. " in readme
    assert "## Upgrading" in readme


def test_dockerfile_agrees_with_the_chart(chart):
    dockerfile = (REPO / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith(("#", " "))]
    froms = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert froms[0].startswith("rust:1-bookworm")
    assert froms[-1].startswith("gcr.io/distroless/")
    (entrypoint,) = [json.loads(line[len("ENTRYPOINT "):]) for line in instructions if line.startswith("ENTRYPOINT ")]
    (user,) = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split())
    assert exposed == {"8500/tcp", "8502/tcp", "8600/udp", "8600/tcp"}

    objs = manifests(render(chart, {}))
    (container,) = find(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == entrypoint
    ports = {f"{p['containerPort']}/{p['protocol'].lower()}" for p in container["ports"]}
    assert ports == exposed
    # The image's user is the one the chart runs as.
    pod_sc = find(objs, "StatefulSet")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}"
    assert "target" in (REPO / ".dockerignore").read_text().split()


def test_image_serves_grpc_on_every_interface():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ROSTER_GRPC_ADDR=0.0.0.0:8502" in dockerfile
    assert "8502/tcp" in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()


def test_helm_test_pod_registers_and_resolves(chart):
    for values in (VALUE_SETS["defaults"], ALL_FEATURES):
        objs = manifests(render(chart, values))
        test_pod = find(objs, "Pod")
        assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        spec = test_pod["spec"]
        register, resolve = spec["initContainers"]
        (deregister,) = spec["containers"]
        full = merged(values)
        assert register["image"] == deregister["image"] == full["tests"]["curlImage"]
        assert resolve["image"] == full["tests"]["dnsImage"]
        http_svc = [o for _, o in objs if o["kind"] == "Service" and o["spec"]["ports"][0]["name"] == "http"
                    and o["spec"].get("clusterIP") != "None"][0]
        env = {e["name"]: e.get("value") for e in register["env"]}
        assert env["API"] == f"http://{http_svc['metadata']['name']}.{NAMESPACE}.svc:{http_svc['spec']['ports'][0]['port']}"
        assert "-X PUT \"$API/v1/services/helm-test/instances/$POD_NAME\"" in register["command"][-1]
        assert "-X DELETE \"$API/v1/services/helm-test/instances/$POD_NAME\"" in deregister["command"][-1]

        dns_svc = [o for _, o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-dns")][0]
        renv = {e["name"]: e.get("value") for e in resolve["env"]}
        pinned = dns_svc["spec"].get("clusterIP")
        if pinned:
            assert renv["DNS_SERVER"] == pinned
        else:
            # Kubernetes' service link variable for the DNS Service.
            var = dns_svc["metadata"]["name"].upper().replace("-", "_") + "_SERVICE_HOST"
            assert renv["DNS_SERVER"] == f"$({var})"
            assert spec["enableServiceLinks"] is True
        domain = full["roster"]["dns"]["domain"].rstrip(".")
        assert renv["NAME"] == f"helm-test.service.{domain}."
        assert "nslookup -type=A \"$NAME\" \"$DNS_SERVER\"" in resolve["command"][-1]
        for c in (register, resolve, deregister):
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


# --- Access control (acl.*) ---------------------------------------------------

ACL_CASES = {
    "chart-secret": {},
    "existing-secret": {"acl": {"existingSecret": "roster-tokens"}},
    "disabled": {"acl": {"enabled": False}},
}
TOKENS_PATH = "/etc/roster/acl/tokens.toml"


def _roster_container(objs) -> tuple[dict, dict]:
    pod = find(objs, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_acl_secret_created_by_the_chart(chart):
    objs = manifests(render(chart, {}))
    secret = find(objs, "Secret")
    assert secret["metadata"]["name"] == "r1-roster-acl"
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "r1"
    assert secret["type"] == "Opaque"
    data = secret_data(secret)
    assert sorted(data) == ["admin-token", "tokens.toml"]
    token = data["admin-token"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token), token
    # The token file is built from the admin token and is what roster parses.
    assert tomllib.loads(data["tokens.toml"]) == {
        "tokens": [{"name": "admin", "secret": token, "policies": ["admin"]}]
    }
    # Without a cluster, lookup finds nothing: every rendering draws a new token.
    again = secret_data(find(manifests(render(chart, {})), "Secret"))
    assert again["admin-token"] != token


def test_acl_secret_is_kept_across_upgrades():
    """The admin token comes from `lookup` of the Secret in the cluster when there
    is one; a new random one is drawn only when there is none (or it is unusable)."""
    template = (CHART / "templates/secret-acl.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert 'index $current.data "admin-token" | b64dec' in template
    assert "randAlphaNum 40" in template
    assert template.index("lookup") < template.index("randAlphaNum")


@pytest.mark.parametrize("case", sorted(ACL_CASES))
def test_acl_args_volume_and_mount(chart, case):
    objs = manifests(render(chart, ACL_CASES[case]))
    pod, container = _roster_container(objs)
    args = container["args"]
    secrets = [o for _, o in objs if o["kind"] == "Secret"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if case == "disabled":
        assert not any(a.startswith("--acl") for a in args), args
        assert secrets == []
        assert "acl" not in mounts and "acl" not in volumes
        return
    name = "roster-tokens" if case == "existing-secret" else "r1-roster-acl"
    assert [s["metadata"]["name"] for s in secrets] == ([] if case == "existing-secret" else [name])
    assert args.count("--acl=true") == 1
    assert args.count(f"--acl-tokens={TOKENS_PATH}") == 1
    assert mounts["acl"] == {"name": "acl", "mountPath": "/etc/roster/acl", "readOnly": True}
    # Only the token file is mounted (not admin-token), readable by owner and
    # group: the kubelet gives it the pod's fsGroup, which roster runs with.
    assert volumes["acl"] == {
        "name": "acl",
        "secret": {
            "secretName": name,
            "defaultMode": 0o440,
            "items": [{"key": "tokens.toml", "path": "tokens.toml"}],
        },
    }
    assert pod["securityContext"]["fsGroup"] == 65532
    assert container["securityContext"].get("runAsUser", pod["securityContext"]["runAsUser"]) == 65532


def test_acl_needs_fs_group(chart):
    values = {"podSecurityContext": {"fsGroup": None, "fsGroupChangePolicy": None}}
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(chart, values)
    assert "acl.enabled needs podSecurityContext.fsGroup" in str(err.value)
    # Without ACLs, nothing needs the group.
    pod, _ = _roster_container(manifests(render(chart, {**values, "acl": {"enabled": False}})))
    assert "fsGroup" not in pod["securityContext"]


@pytest.mark.parametrize("case", sorted(ACL_CASES))
def test_helm_test_pod_sends_the_admin_token(chart, case):
    objs = manifests(render(chart, ACL_CASES[case]))
    spec = find(objs, "Pod")["spec"]
    register, resolve = spec["initContainers"]
    (deregister,) = spec["containers"]
    for curl in (register, deregister):
        env = {e["name"]: e for e in curl["env"]}
        script = curl["command"][-1]
        if case == "disabled":
            assert "ROSTER_TOKEN" not in env
            assert "Authorization" not in script and "-H @-" not in script
            continue
        name = "roster-tokens" if case == "existing-secret" else "r1-roster-acl"
        assert env["ROSTER_TOKEN"] == {
            "name": "ROSTER_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": name, "key": "admin-token"}},
        }
        # The header goes through standard input, the token never into argv.
        assert "printf 'Authorization: Bearer %s\\n' \"$ROSTER_TOKEN\" |\ncurl " in script
        assert "-H @-" in script
    # DNS needs no token.
    assert "ROSTER_TOKEN" not in {e["name"] for e in resolve["env"]}


@pytest.mark.parametrize("case", sorted(ACL_CASES))
def test_notes_explain_the_admin_token(chart, case):
    notes = render(chart, ACL_CASES[case])["roster/templates/NOTES.txt"]
    if case == "disabled":
        assert "admin-token" not in notes and "Bearer" not in notes
        return
    name = "roster-tokens" if case == "existing-secret" else "r1-roster-acl"
    assert (f"kubectl -n {NAMESPACE} get secret {name} -o jsonpath='{{.data.admin-token}}' | base64 -d"
            in notes)
    assert 'curl http://127.0.0.1:8500/v1/services/web -H "Authorization: Bearer $ROSTER_TOKEN"' in notes


def test_acl_schema_defaults_match_values():
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["acl"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["acl"]
    assert values == {"enabled": True, "existingSecret": "", "anonymousPolicies": []}
    assert {k: v["default"] for k, v in schema["properties"].items()} == values
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "policies",
    [[], ["read"], ["read", "write:canary-*"]],
    ids=["none", "read", "read-and-write"],
)
def test_acl_anonymous_policies_in_the_chart_token_file(chart, policies):
    """acl.anonymousPolicies becomes the [anonymous] table of the chart's
    tokens.toml, and only when given: by default calls without a token get 401."""
    values = {"acl": {"anonymousPolicies": policies}} if policies else {}
    objs = manifests(render(chart, values))
    data = secret_data(find(objs, "Secret", "r1-roster-acl"))
    parsed = tomllib.loads(data["tokens.toml"])
    assert parsed["tokens"] == [{"name": "admin", "secret": data["admin-token"], "policies": ["admin"]}]
    annotations = find(objs, "StatefulSet")["spec"]["template"]["metadata"].get("annotations", {})
    notes = render(chart, values)["roster/templates/NOTES.txt"]
    if not policies:
        assert "anonymous" not in parsed
        assert "[anonymous]" not in data["tokens.toml"]
        assert "checksum/acl-anonymous" not in annotations
        assert "Calls without a token have" not in notes
        return
    assert parsed["anonymous"] == {"policies": policies}
    assert sorted(parsed) == ["anonymous", "tokens"]
    # The pods read the file at start: the policies' checksum on the pod
    # template rolls them when the policies change (and only then).
    digest = annotations["checksum/acl-anonymous"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    again = find(manifests(render(chart, values)), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert again["checksum/acl-anonymous"] == digest
    other = {"acl": {"anonymousPolicies": [*policies, "write:other"]}}
    changed = find(manifests(render(chart, other)), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert changed["checksum/acl-anonymous"] != digest
    assert f"Calls without a token have the policies {', '.join(policies)}" in notes


def test_acl_anonymous_policies_keep_pod_annotations(chart):
    values = {"podAnnotations": {"example.com/scrape": "true"}, "acl": {"anonymousPolicies": ["read"]}}
    meta = find(manifests(render(chart, values)), "StatefulSet")["spec"]["template"]["metadata"]
    assert meta["annotations"]["example.com/scrape"] == "true"
    assert "checksum/acl-anonymous" in meta["annotations"]


def test_acl_anonymous_policies_need_the_chart_secret(chart):
    """With acl.existingSecret the chart writes no token file, so it refuses
    anonymous policies it could not apply rather than ignore them."""
    values = {"acl": {"existingSecret": "roster-tokens", "anonymousPolicies": ["read"]}}
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(chart, values)
    assert "put an [anonymous] table with those policies in your tokens.toml" in str(err.value)
    # ACLs off: nothing to write them into, and nothing closed either.
    objs = manifests(render(chart, {"acl": {"enabled": False, "anonymousPolicies": ["read"]}}))
    assert [o for _, o in objs if o["kind"] == "Secret"] == []
    meta = find(objs, "StatefulSet")["spec"]["template"]["metadata"]
    assert "checksum/acl-anonymous" not in meta.get("annotations", {})


def _sync(objs):
    return (
        find(objs, "Deployment", "r1-roster-sync-k8s"),
        find(objs, "ServiceAccount", "r1-roster-sync-k8s"),
        find(objs, "ClusterRole", "r1-roster-sync-k8s"),
        find(objs, "ClusterRoleBinding", "r1-roster-sync-k8s"),
    )


def test_sync_catalog_is_off_by_default(chart):
    objs = manifests(render(chart, {}))
    kinds = {o["kind"] for _, o in objs}
    assert not kinds & {"Deployment", "ClusterRole", "ClusterRoleBinding"}, kinds
    assert not any("sync-k8s" in o["metadata"]["name"] for _, o in objs)


def test_sync_catalog_renders_the_registrar_and_its_rbac(chart):
    objs = manifests(render(chart, {"syncCatalog": {"enabled": True}}))
    deployment, sa, role, binding = _sync(objs)

    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "r1-roster-sync-k8s"
    assert pod["automountServiceAccountToken"] is True, "it reads the Kubernetes API"
    (container,) = pod["containers"]
    assert container["command"] == ["/usr/local/bin/roster", "sync-k8s"]
    assert container["args"] == [
        f"--registry=http://r1-roster.{NAMESPACE}.svc:8500",
        "--naming=name",
        "--default-sync=true",
        "--include-not-ready=true",
        "--exclude-namespaces=kube-system,kube-public",
        "--resync=60s",
        "--log=info",
    ]
    # The write token: the admin token of the chart's ACL Secret.
    assert container["env"] == [
        {"name": "ROSTER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "r1-roster-acl", "key": "admin-token"}}}
    ]
    assert find(objs, "Secret", "r1-roster-acl")
    sts = find(objs, "StatefulSet", "r1-roster")
    assert container["image"] == sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "256Mi"

    # The registry's Services and PDB never select the registrar's pod.
    for name in ("r1-roster", "r1-roster-dns", "r1-roster-headless"):
        selector = find(objs, "Service", name)["spec"]["selector"]
        assert not selector.items() <= pod_labels.items(), name
    assert not find(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # RBAC: read-only, exactly what it watches.
    assert sa["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    ]
    assert "namespace" not in role["metadata"], "cluster-scoped"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r1-roster-sync-k8s"
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "r1-roster-sync-k8s", "namespace": NAMESPACE}]
    for obj in (deployment, sa, role, binding):
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("acl", "env"),
    [
        ({"enabled": True, "existingSecret": "my-tokens"},
         [{"name": "ROSTER_TOKEN", "valueFrom": {"secretKeyRef": {"name": "my-tokens", "key": "admin-token"}}}]),
        ({"enabled": False}, None),
    ],
    ids=["existing-secret", "acl-off"],
)
def test_sync_catalog_token_follows_the_acl_settings(chart, acl, env):
    objs = manifests(render(chart, {"syncCatalog": {"enabled": True}, "acl": acl}))
    deployment, *_ = _sync(objs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container.get("env") == env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"syncCatalog": {"enabled": "yes"}}, "/syncCatalog/enabled"),
        ({"syncCatalog": {"naming": "namespace-name"}}, "/syncCatalog/naming"),
        ({"syncCatalog": {"resync": "often"}}, "/syncCatalog/resync"),
        ({"syncCatalog": {"registry": "roster:8500"}}, "/syncCatalog/registry"),
        ({"syncCatalog": {"excludeNamespaces": ["Kube_System"]}}, "/syncCatalog/excludeNamespaces/0"),
        ({"syncCatalog": {"rbac": {}}}, "additional properties 'rbac' not allowed"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_sync_catalog_schema_rejects_bad_values(chart, values, message):
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(chart, values)
    assert message in str(err.value)


# --- Raft cluster (replicas 3 and 5) -------------------------------------------

HEADLESS_FQDN = f"r1-roster-headless.{NAMESPACE}.svc.cluster.local"
CLUSTER_ENV = ["POD_NAME", "ROSTER_ADVERTISE_ADDR", "ROSTER_JOIN", "ROSTER_BOOTSTRAP_EXPECT", "ROSTER_CLUSTER_TOKEN"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_one_replica_has_no_cluster_settings(chart):
    """replicas: 1 renders as before the chart knew Raft: no cluster env, no
    cluster Secret, no default anti-affinity."""
    for values in ({}, VALUE_SETS["minimal"], ALL_FEATURES):
        objs = manifests(render(chart, values))
        pod, container = _roster_container(objs)
        assert find(objs, "StatefulSet")["spec"]["replicas"] == 1
        assert not set(CLUSTER_ENV) & set(_env(container)), container.get("env")
        assert not [o for _, o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-cluster")]
        assert pod.get("affinity") == (values.get("affinity") or None)
    # Without extraEnv there is no env at all, as before.
    assert "env" not in _roster_container(manifests(render(chart, {})))[1]


@pytest.mark.parametrize("replicas", [3, 5])
def test_cluster_pods_find_and_authenticate_each_other(chart, replicas):
    objs = manifests(render(chart, {"replicas": replicas}))
    sts = find(objs, "StatefulSet", "r1-roster")
    spec = sts["spec"]
    assert spec["replicas"] == replicas
    # Every pod must start for the first cluster to form (bootstrap-expect).
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "r1-roster-headless"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    pod, container = _roster_container(objs)

    env = container["env"]
    assert [e["name"] for e in env] == CLUSTER_ENV, "POD_NAME must come before the variable that uses it"
    by_name = _env(container)
    assert by_name["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert by_name["ROSTER_ADVERTISE_ADDR"]["value"] == f"$(POD_NAME).{HEADLESS_FQDN}:8500"
    assert by_name["ROSTER_JOIN"]["value"] == f"{HEADLESS_FQDN}:8500"
    assert by_name["ROSTER_BOOTSTRAP_EXPECT"]["value"] == str(replicas)
    assert by_name["ROSTER_CLUSTER_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "r1-roster-cluster", "key": "cluster-token"}
    }
    # The data dir Raft needs is the claim, as with one replica.
    assert "--data-dir=/var/lib/roster" in container["args"]
    assert {"name": "data", "mountPath": "/var/lib/roster"} in container["volumeMounts"]

    # The advertised and joined names exist: the headless Service governs the
    # StatefulSet, lists pods before they are ready, and carries the HTTP port.
    headless = find(objs, "Service", "r1-roster-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert {"name": "http", "port": 8500, "targetPort": "http", "protocol": "TCP"} in headless["spec"]["ports"]
    assert HEADLESS_FQDN.startswith(f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.")

    secret = find(objs, "Secret", "r1-roster-cluster")
    assert secret["metadata"]["namespace"] == NAMESPACE
    token = secret_data(secret)["cluster-token"]
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token), token
    assert secret_data(find(objs, "Secret", "r1-roster-acl"))["admin-token"] != token

    # One eviction at a time keeps a majority.
    pdb = find(objs, "PodDisruptionBudget")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": spec["selector"]}

    # Replicas spread over Kubernetes nodes where the scheduler can.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]

    for _, obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_cluster_names_follow_the_domain_ports_and_secret_values(chart):
    values = VALUE_SETS["cluster-5-custom"]
    objs = manifests(render(chart, values))
    pod, container = _roster_container(objs)
    by_name = _env(container)
    fqdn = f"r1-roster-headless.{NAMESPACE}.svc.k8s.example.org"
    assert by_name["ROSTER_ADVERTISE_ADDR"]["value"] == f"$(POD_NAME).{fqdn}:9500"
    assert by_name["ROSTER_JOIN"]["value"] == f"{fqdn}:9500"
    assert by_name["ROSTER_BOOTSTRAP_EXPECT"]["value"] == "5"
    assert by_name["ROSTER_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "raft-token", "key": "cluster-token"}
    assert "--http-addr=0.0.0.0:9500" in container["args"]
    # The user's variables come after the chart's.
    assert [e["name"] for e in container["env"]] == CLUSTER_ENV + ["RUST_BACKTRACE"]
    # The user's Secret: the chart creates none.
    assert not [o for _, o in objs if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-cluster")]
    # Five nodes keep a majority with two down.
    assert find(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 2


def test_cluster_affinity_from_values_replaces_the_default(chart):
    affinity = ALL_FEATURES["affinity"]
    pod, _ = _roster_container(manifests(render(chart, {"replicas": 3, "affinity": affinity})))
    assert pod["affinity"] == affinity


def test_cluster_without_persistence_is_refused_by_the_template_too(chart, tmp_path):
    """`helm template --skip-schema-validation` bypasses the schema; the
    template's own check still refuses a cluster on emptyDirs."""
    copy_dir = tmp_path / "roster"
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    unchecked = helm_python.Chart.load(str(copy_dir))
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(unchecked, {"replicas": 3, "persistence": {"enabled": False}})
    assert "replicas above 1 needs persistence.enabled=true" in str(err.value)
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(unchecked, {"replicas": 2})
    assert "replicas must be 1, 3 or 5, not 2" in str(err.value)
    # The same copy renders a persistent cluster: the checks above are the refusals.
    assert find(manifests(render(unchecked, {"replicas": 3})), "StatefulSet")["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("replicas", "budget", "allowed"),
    [
        (3, {"maxUnavailable": 1}, True),
        (3, {"maxUnavailable": 2}, False),
        (3, {"maxUnavailable": "20%"}, True),   # rounds up to 1
        (3, {"maxUnavailable": "50%"}, False),  # rounds up to 2
        (3, {"minAvailable": 2, "maxUnavailable": None}, True),
        (3, {"minAvailable": 1, "maxUnavailable": None}, False),
        (3, {"minAvailable": "60%", "maxUnavailable": None}, True),  # 2 of 3
        (5, {"maxUnavailable": 2}, True),
        (5, {"maxUnavailable": 3}, False),
        (5, {"maxUnavailable": "40%"}, True),   # 2 of 5
        (5, {"minAvailable": 2, "maxUnavailable": None}, False),
        (1, {"maxUnavailable": "100%"}, True),  # one pod: no quorum to keep
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_disruption_budget_must_keep_a_raft_majority(chart, replicas, budget, allowed):
    values = {"replicas": replicas, "podDisruptionBudget": budget}
    if not allowed:
        with pytest.raises(helm_python.HelmRenderError) as err:
            render(chart, values)
        assert f"of {replicas} pods be evicted at once, but the Raft cluster needs" in str(err.value)
        return
    pdb = find(manifests(render(chart, values)), "PodDisruptionBudget")["spec"]
    key = "minAvailable" if "minAvailable" in budget else "maxUnavailable"
    assert pdb[key] == budget[key]


def test_cluster_disruption_budget_can_be_turned_off(chart):
    objs = manifests(render(chart, {"replicas": 3, "podDisruptionBudget": {"enabled": False}}))
    assert not [o for _, o in objs if o["kind"] == "PodDisruptionBudget"]


def test_cluster_token_is_kept_across_upgrades():
    """Like the ACL Secret: `lookup` first, a new random token only when the
    cluster has none (nodes with different tokens could not talk mid-upgrade)."""
    template = (CHART / "templates/secret-cluster.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template
    assert 'index $current.data "cluster-token" | b64dec' in template
    assert "randAlphaNum 48" in template
    assert template.index("lookup") < template.index("randAlphaNum")


def test_cluster_notes_list_every_pod(chart):
    notes = render(chart, {"replicas": 3})["roster/templates/NOTES.txt"]
    pods = ",".join(f"http://r1-roster-{i}.{HEADLESS_FQDN}:8500" for i in range(3))
    assert f"roster --registry={pods} services" in notes
    assert "Raft cluster of 3 pods" in notes
    assert "while 1 pod(s) are down" in notes
    assert "Raft" not in render(chart, {})["roster/templates/NOTES.txt"]


PEER_TLS = VALUE_SETS["cluster-peer-tls"]
PEER_TLS_ENV = {
    "ROSTER_PEER_TLS_CERT": "/etc/roster/peer-tls/tls.crt",
    "ROSTER_PEER_TLS_KEY": "/etc/roster/peer-tls/tls.key",
    "ROSTER_PEER_TLS_CA": "/etc/roster/peer-tls/ca.crt",
}


def test_peer_tls_is_off_by_default(chart):
    for values in ({}, {"replicas": 3}, VALUE_SETS["cluster-5-custom"]):
        pod, container = _roster_container(manifests(render(chart, values)))
        assert not set(PEER_TLS_ENV) & set(_env(container)), container.get("env")
        assert "peer-tls" not in {m["name"] for m in container["volumeMounts"]}
        assert "peer-tls" not in {v["name"] for v in pod.get("volumes", [])}
        assert "scheme" not in container["readinessProbe"]["httpGet"]


def test_peer_tls_mounts_the_certificate_secret_and_names_its_files(chart):
    objs = manifests(render(chart, PEER_TLS))
    pod, container = _roster_container(objs)
    env = _env(container)
    # The chart's cluster variables first, then the peer certificate's files.
    assert [e["name"] for e in container["env"]] == CLUSTER_ENV + list(PEER_TLS_ENV)
    assert {name: env[name]["value"] for name in PEER_TLS_ENV} == PEER_TLS_ENV
    # Read-only, the whole Secret (no subPath), so a renewed certificate reaches
    # the pod without a restart.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["peer-tls"] == {"name": "peer-tls", "mountPath": "/etc/roster/peer-tls", "readOnly": True}
    assert not any("subPath" in m for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["peer-tls"] == {
        "name": "peer-tls",
        "secret": {
            "secretName": "roster-peer-tls",
            "defaultMode": 0o440,
            "items": [
                {"key": "tls.crt", "path": "tls.crt"},
                {"key": "tls.key", "path": "tls.key"},
                {"key": "ca.crt", "path": "ca.crt"},
            ],
        },
    }
    # The files are the group's (fsGroup), which roster runs with.
    assert pod["securityContext"]["fsGroup"] == 65532
    # The ACL token file is still there next to it.
    assert mounts["acl"]["mountPath"] == "/etc/roster/acl"
    # With peer TLS the HTTP port speaks TLS only: the probes follow.
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The chart makes no certificate Secret: cert-manager (or you) does.
    assert not [o for _, o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == "roster-peer-tls"]
    for _, obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


def test_peer_tls_applies_to_a_cluster_only(chart):
    """One replica has no peers: the value renders nothing there."""
    values = {"cluster": PEER_TLS["cluster"]}
    pod, container = _roster_container(manifests(render(chart, values)))
    assert "env" not in container
    assert "peer-tls" not in {v["name"] for v in pod.get("volumes", [])}


def test_peer_tls_refusals_hold_without_the_schema(chart, tmp_path):
    """`--skip-schema-validation` bypasses the schema; the template still
    refuses peer TLS without a Secret, or without the fsGroup its files need."""
    copy_dir = tmp_path / "roster"
    shutil.copytree(CHART, copy_dir)
    (copy_dir / "values.schema.json").unlink()
    unchecked = helm_python.Chart.load(str(copy_dir))
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(unchecked, {"replicas": 3, "cluster": {"peerTls": {"enabled": True}}})
    assert "cluster.peerTls.enabled needs cluster.peerTls.secretName" in str(err.value)
    no_group = {
        **PEER_TLS,
        "acl": {"enabled": False},
        "podSecurityContext": {"fsGroup": None, "fsGroupChangePolicy": None},
    }
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(unchecked, no_group)
    assert "cluster.peerTls.enabled needs podSecurityContext.fsGroup" in str(err.value)


def test_chart_readme_shows_a_cert_manager_certificate_for_peer_tls(chart):
    """The README's example Certificate (release `roster` in roster-system)
    covers every pod's name, both usages, and lands in the Secret the value
    names."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    docs = [d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("apiVersion") == "cert-manager.io/v1"]
    secret = PEER_TLS["cluster"]["peerTls"]["secretName"]
    (cert,) = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == secret]
    spec = cert["spec"]
    assert not spec.get("isCA")
    # Its issuer is a CA issuer of its own, whose CA certificate is in the example too.
    (issuer,) = [d for d in docs if d["kind"] == "Issuer" and d["metadata"]["name"] == spec["issuerRef"]["name"]]
    (ca,) = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == issuer["spec"]["ca"]["secretName"]]
    assert ca["spec"]["isCA"] is True
    objs = manifests(chart.render(copy.deepcopy(PEER_TLS), name="roster", namespace=NAMESPACE, is_install=True))
    sts = find(objs, "StatefulSet")
    pods = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local" for i in range(3)]
    assert pods[0] == "roster-0.roster-headless.roster-system.svc.cluster.local"
    # The join name (the headless Service itself) is checked as a name too.
    assert pods[0].split(".", 1)[1] in spec["dnsNames"]
    for pod in pods:
        assert any(
            name == pod or (name.startswith("*.") and pod.split(".", 1)[1] == name[2:]) for name in spec["dnsNames"]
        ), (pod, spec["dnsNames"])
    assert set(spec["usages"]) >= {"server auth", "client auth"}
    assert "--set cluster.peerTls.enabled=true" in readme


def test_with_peer_tls_helm_test_talks_https_to_a_pod_trusting_the_peer_ca(chart):
    """The port speaks TLS with the peer certificate, which names the pods:
    the test pod goes to the first pod by name and trusts the peer CA."""
    test_pod = render(chart, PEER_TLS)["roster/templates/tests/test-register-resolve.yaml"]
    pod = yaml.safe_load(test_pod)
    env = {e["name"]: e.get("value") for e in pod["spec"]["initContainers"][0]["env"]}
    assert env["API"] == "https://r1-roster-0.r1-roster-headless.roster-system.svc.cluster.local:8500"
    assert env["CURL_CA_BUNDLE"] == "/etc/roster/peer-ca/ca.crt"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["peer-ca"]["secret"] == {
        "secretName": "roster-peer-tls",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    for container in pod["spec"]["initContainers"][:1] + pod["spec"]["containers"]:
        mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
        assert mounts["peer-ca"]["mountPath"] == "/etc/roster/peer-ca", container["name"]
    kubernetes_validate.validate(pod, KUBE_VERSIONS[-1], strict=True)
    # Without peer TLS: plain HTTP through the Service, as before.
    plain = yaml.safe_load(render(chart, {"replicas": 3})["roster/templates/tests/test-register-resolve.yaml"])
    env = {e["name"]: e.get("value") for e in plain["spec"]["initContainers"][0]["env"]}
    assert env["API"].startswith("http://r1-roster.") and "CURL_CA_BUNDLE" not in env


@pytest.mark.parametrize("extra,needle", [
    ({"metrics": {"serviceMonitor": {"enabled": True}}}, "metrics.serviceMonitor with cluster.peerTls"),
    ({"syncCatalog": {"enabled": True}}, "syncCatalog with cluster.peerTls"),
])
def test_peer_tls_refuses_what_cannot_talk_tls_yet(chart, extra, needle):
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmValuesError)) as err:
        render(chart, {**PEER_TLS, **extra})
    assert needle in str(err.value)


# --- gRPC (xDS) ---------------------------------------------------------------

GRPC_OFF = {"roster": {"grpc": {"enabled": False}}}


def test_grpc_defaults_agree_with_the_schema_and_the_binary():
    """On by default, on Consul's gRPC port, with roster's own stream limit."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["roster"]["grpc"] == {"enabled": True, "maxStreams": 16384}
    grpc_schema = schema["roster"]["properties"]["grpc"]
    assert {k: v["default"] for k, v in grpc_schema["properties"].items()} == values["roster"]["grpc"]
    assert grpc_schema["additionalProperties"] is False
    assert "grpc" in schema["roster"]["required"]
    assert values["containerPorts"]["grpc"] == values["service"]["grpcPort"] == 8502
    assert "grpc" in schema["containerPorts"]["required"]
    assert "grpcPort" in schema["service"]["required"]


def test_grpc_args_are_exact_and_in_place(chart):
    """The whole default command line: gRPC's two words come after DNS's, one
    "--flag=value" word each like the others."""
    _, container = _roster_container(manifests(render(chart, {})))
    assert container["args"] == [
        "--http-addr=0.0.0.0:8500",
        "--data-dir=/var/lib/roster",
        "--dns-addr=0.0.0.0:8600",
        "--dns-domain=roster",
        "--dns-ttl=0",
        "--grpc-addr=0.0.0.0:8502",
        "--max-xds-streams=16384",
        "--log=info",
        "--lease-grace=30s",
        "--deregister-critical-after=1m",
        "--max-instances-per-service=10000",
        "--max-instances=200000",
        "--acl=true",
        "--acl-tokens=/etc/roster/acl/tokens.toml",
    ]
    _, off = _roster_container(manifests(render(chart, GRPC_OFF)))
    # Off: the one word "--no-grpc" in their place, the rest unchanged.
    assert off["args"] == container["args"][:5] + ["--no-grpc"] + container["args"][7:]


def test_grpc_ports_follow_the_values(chart):
    """containerPorts.grpc is what the pod listens on and the headless Service
    carries; service.grpcPort is the Service's port, sent to the pod's named
    port whatever its number."""
    values = {"containerPorts": {"grpc": 9502}, "service": {"grpcPort": 443}, "roster": {"grpc": {"maxStreams": 100}}}
    objs = manifests(render(chart, values))
    _, container = _roster_container(objs)
    assert "--grpc-addr=0.0.0.0:9502" in container["args"]
    assert "--max-xds-streams=100" in container["args"]
    assert {"name": "grpc", "containerPort": 9502, "protocol": "TCP"} in container["ports"]
    http = find(objs, "Service", "r1-roster")["spec"]["ports"]
    assert http[-1] == {"name": "grpc", "port": 443, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    headless = find(objs, "Service", "r1-roster-headless")["spec"]["ports"]
    assert headless[-1] == {"name": "grpc", "port": 9502, "targetPort": "grpc", "protocol": "TCP",
                            "appProtocol": "grpc"}
    # No DNS Service port: gRPC is not DNS.
    assert [p["name"] for p in find(objs, "Service", "r1-roster-dns")["spec"]["ports"]] == ["dns-udp", "dns-tcp"]
    # Every Service port that targets "grpc" names a container port.
    names = {p["name"] for p in container["ports"]}
    for _, svc in objs:
        if svc["kind"] == "Service":
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, svc["metadata"]["name"]
    notes = render(chart, values)["roster/templates/NOTES.txt"]
    assert f"r1-roster.{NAMESPACE}.svc:443" in notes


def test_grpc_disabled_renders_no_grpc_anywhere(chart):
    rendered = render(chart, {**GRPC_OFF, "networkPolicy": {"enabled": True}})
    objs = manifests(rendered)
    _, container = _roster_container(objs)
    args = container["args"]
    assert args.count("--no-grpc") == 1
    assert not any(a.startswith(("--grpc-addr", "--max-xds-streams")) for a in args), args
    # DNS is unaffected.
    assert "--dns-addr=0.0.0.0:8600" in args
    assert [p["name"] for p in container["ports"]] == ["http", "dns-udp", "dns-tcp"]
    assert [p["name"] for p in find(objs, "Service", "r1-roster")["spec"]["ports"]] == ["http"]
    assert [p["name"] for p in find(objs, "Service", "r1-roster-headless")["spec"]["ports"]] == [
        "http", "dns-udp", "dns-tcp"
    ]
    ports = [p["port"] for rule in find(objs, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]]
    assert ports == ["http", "dns-udp", "dns-tcp"]
    notes = rendered["roster/templates/NOTES.txt"]
    assert "gRPC (xDS) is off (roster.grpc.enabled=false)." in notes
    assert "xds:///" not in notes
    for _, obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("http_from", [[], ALL_FEATURES["networkPolicy"]["httpFrom"]], ids=["any-source", "http-from"])
def test_grpc_network_policy_allows_the_http_api_peers(chart, http_from):
    """gRPC reads the same catalog as the HTTP API: one rule, the same peers."""
    values = {"networkPolicy": {"enabled": True, "httpFrom": http_from,
                                "dnsFrom": ALL_FEATURES["networkPolicy"]["dnsFrom"]}}
    policy = find(manifests(render(chart, values)), "NetworkPolicy")["spec"]
    http_rule, dns_rule = policy["ingress"]
    assert http_rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
    assert http_rule.get("from", []) == http_from
    # The DNS peers do not get the gRPC port.
    assert {p["port"] for p in dns_rule["ports"]} == {"dns-udp", "dns-tcp"}
    kubernetes_validate.validate(find(manifests(render(chart, values)), "NetworkPolicy"), KUBE_VERSIONS[-1],
                                 strict=True)


@pytest.mark.parametrize(
    ("values", "token_hint"),
    [
        ({}, True),
        ({"acl": {"anonymousPolicies": ["read"]}}, False),
        ({"acl": {"anonymousPolicies": ["write:web-*"]}}, True),
        ({"acl": {"existingSecret": "roster-tokens"}}, True),
        ({"acl": {"enabled": False}}, False),
    ],
    ids=["acl", "anonymous-read", "anonymous-write-only", "existing-secret", "acl-off"],
)
def test_grpc_notes_tell_clients_where_to_point(chart, values, token_hint):
    notes = render(chart, values)["roster/templates/NOTES.txt"]
    assert "gRPC clients dial xds:///SERVICE (e.g. xds:///web)" in notes
    assert "server_uri" in notes
    assert f"\n  r1-roster.{NAMESPACE}.svc:8502\n" in notes
    assert ("an xDS stream needs a read token" in notes) == token_hint
