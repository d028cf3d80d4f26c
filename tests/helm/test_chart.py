"""The Helm chart with a real helm binary: lint, render, guards, strict schema, and what it renders."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import tool_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "finetune-operator"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool_path("helm")), *args], capture_output=True, text=True, check=check, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "ft", str(CHART), "--namespace", "ops", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


@pytest.mark.parametrize("values", [None, ALL_OPTIONS, NAMESPACED], ids=["default", "all-options", "namespaced"])
def test_lint_strict(values: Path | None) -> None:
    result = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert "0 chart(s) failed" in result.stdout


def test_default_render_is_a_restricted_single_replica_operator() -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            *["CustomResourceDefinition"] * 5,  # FineTuneJob, EvalRun, Model, FineTuneSchedule, Dataset
            "Deployment",
            "Service",
            "ServiceAccount",
        ]
    )
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 1
    assert container["args"] == ["--standalone"]
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "finetune-operator"
    assert labels["app.kubernetes.io/instance"] == "ft"


def test_chart_crds_are_the_generated_ones_and_kept_on_uninstall() -> None:
    for crd in (d for d in render() if d["kind"] == "CustomResourceDefinition"):
        generated = yaml.safe_load((REPO / "crds" / f"{crd['spec']['names']['plural']}.yaml").read_text())
        assert crd["spec"] == generated["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    without = render("--set", "crds.enabled=false", "--set", "crds.keep=false")
    assert not [d for d in without if d["kind"] == "CustomResourceDefinition"]


def test_all_options_render() -> None:
    docs = render("-f", str(ALL_OPTIONS))
    deployment = find(docs, "Deployment", "ft-finetune-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["args"] == ["--peering=ft-finetune-operator"]
    assert env["FINETUNE_S3_ENDPOINT"] == "https://minio.storage.svc:9000"
    assert env["FINETUNE_OUTPUT_URI"] == "s3://team-adapters"
    assert env["FINETUNE_METRICS_PORT"] == "9090"
    assert find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] == "15s"
    dashboard = find(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "finetune_jobs" in dashboard["data"]["finetune-operator.json"]
    assert find(docs, "ClusterKopfPeering")["metadata"]["name"] == "ft-finetune-operator"
    rules = find(docs, "ClusterRole")["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules
    minio = find(docs, "Deployment", "ft-finetune-operator-minio")
    assert minio["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert all(
        d["metadata"]["labels"].get("team") == "ml-platform"
        for d in docs
        if d["kind"] != "ClusterKopfPeering" or d["metadata"].get("labels")
    )


def test_namespaced_install_grants_only_watched_namespaces() -> None:
    docs = render("-f", str(NAMESPACED))
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    env = {
        e["name"]: e.get("value") for e in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FINETUNE_NAMESPACES"] == "team-a,team-b"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "replicaCount=2"], "replicaCount > 1 needs peering.enabled=true"),
        (["--set", "peering.enabled=true", "-f", str(NAMESPACED)], "peering.enabled needs rbac.scope=cluster"),
        (["--set", "rbac.scope=namespaced"], "rbac.scope=namespaced needs rbac.watchNamespaces"),
        (["--set", "rbac.watchNamespaces={a}"], "rbac.watchNamespaces only applies with rbac.scope=namespaced"),
        (
            ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
        (["--set", "crds.enabled=false"], "crds.keep has no effect with crds.enabled=false"),
        (["--set", "unknownKey=1"], "additional properties 'unknownKey' not allowed"),
        (["--set", "rbac.scope=everything"], "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
        (["--set", "settings.outputUri=ftp://x"], "at '/settings/outputUri'"),
    ],
)
def test_contradictory_or_unknown_values_fail_at_render(values: list[str], message: str) -> None:
    result = helm("template", "ft", str(CHART), *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_every_value_is_commented_and_in_the_schema() -> None:
    """Each key the schema defines has a comment line above it in values.yaml, and a description."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, dict[str, Any]]] = [(-1, schema)]
    missing = []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        node = parent.get("properties", {}).get(key)
        if node is None:
            assert parent.get("additionalProperties") is not False, f"values.yaml key {key} is not in the schema"
            continue
        previous = next(lines[i] for i in range(index - 1, -1, -1) if lines[i].strip())
        if not previous.strip().startswith("#"):
            missing.append(key)
        assert node.get("description"), f"{key} has no description in values.schema.json"
        stack.append((indent, node))
    assert missing == [], f"keys without a comment in values.yaml: {missing}"
    assert schema["additionalProperties"] is False


# One test value per setting type, valid for the setting (and for the chart's schema).
_PROBES: dict[str, tuple[list[str], object]] = {
    "image_pull_policy": ([], "Always"),
    "output_uri": ([], "s3://probe-bucket"),
    "namespaces": (["--set", "rbac.scope=namespaced"], ("team-probe",)),
}


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: str(e.get("value", "")) for e in container["env"] if e["name"].startswith("FINETUNE_")}


def _values_node(tree: dict[str, Any], dotted: str, schema: bool = False) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node["properties"][part] if schema else node[part]
    return node


def test_the_charts_settings_are_the_operators_settings() -> None:
    """OperatorSettings declares each setting once; the chart follows it (no hand-kept copy drifts):
    every field has its Deployment env var set from the chart value it names, that value's default
    in values.yaml and values.schema.json is the field's default, and the rendered defaults are the
    operator's defaults."""
    import json

    from finetune_operator.config import OperatorSettings, chart_value, env_name

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    fields = OperatorSettings.model_fields
    template = (CHART / "templates" / "deployment.yaml").read_text()
    named = set(re.findall(r"name: (FINETUNE_\w+)", template))
    assert named == {env_name(name) for name in fields}  # no env var without a field, and none missing
    rendered = _env(render())
    assert OperatorSettings.from_env(rendered) == OperatorSettings()  # the chart's defaults are the operator's
    for name, field in fields.items():
        default = [] if field.default == () else "" if field.default is None else field.default
        assert _values_node(values, chart_value(name)) == default, name
        node = _values_node(schema, chart_value(name), schema=True)
        assert node.get("description"), name
        assert node.get("default", default) == default, name
        extra, probe = _PROBES.get(name, ([], None))
        if probe is None:
            probe = {bool: False, int: 4321}.get(type(field.default), "probe-value")
        if isinstance(probe, str):
            flag, shown = ["--set", f"{chart_value(name)}={probe}"], probe
        else:
            as_json = list(probe) if isinstance(probe, tuple) else probe
            flag = ["--set-json", f"{chart_value(name)}={json.dumps(as_json)}"]
            shown = ",".join(probe) if isinstance(probe, tuple) else json.dumps(probe)
        env = _env(render(*extra, *flag))
        assert env[env_name(name)] == shown, (name, env)  # this chart value sets this variable
        assert getattr(OperatorSettings.from_env(env), name) == probe, name


def test_network_policies_are_off_by_default_and_admit_only_what_the_pods_serve() -> None:
    assert [d for d in render() if d["kind"] == "NetworkPolicy"] == []
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = render(
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "devMinio.enabled=true",
        "--set-json",
        f"networkPolicy.metricsFrom=[{json.dumps(monitoring)}]",
    )
    operator = find(docs, "NetworkPolicy", "ft-finetune-operator")
    pod_labels = find(docs, "Deployment", "ft-finetune-operator")["spec"]["template"]["metadata"]["labels"]
    assert operator["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert operator["spec"]["policyTypes"] == ["Ingress"]
    assert operator["spec"]["ingress"] == [
        {"ports": [{"port": "health", "protocol": "TCP"}]},
        {"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [monitoring]},
    ]
    minio = find(docs, "NetworkPolicy", "ft-finetune-operator-minio")
    minio_labels = find(docs, "Deployment", "ft-finetune-operator-minio")["spec"]["template"]["metadata"]["labels"]
    assert minio["spec"]["podSelector"]["matchLabels"].items() <= minio_labels.items()
    assert minio["spec"]["ingress"] == [
        {"from": [{"namespaceSelector": {}}], "ports": [{"port": "s3", "protocol": "TCP"}]}
    ]
    # Without metrics, no metrics port is opened.
    plain = render("--set", "networkPolicy.enabled=true", "--set", "metrics.enabled=false")
    assert find(plain, "NetworkPolicy")["spec"]["ingress"] == [{"ports": [{"port": "health", "protocol": "TCP"}]}]


def test_the_dev_minio_has_probes_and_an_identity_of_its_own_without_a_token() -> None:
    docs = render("--set", "devMinio.enabled=true")
    pod = find(docs, "Deployment", "ft-finetune-operator-minio")["spec"]["template"]["spec"]
    account = find(docs, "ServiceAccount", "ft-finetune-operator-minio")
    assert pod["serviceAccountName"] == account["metadata"]["name"] != "default"
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"


def test_no_env_var_of_the_operator_looks_like_a_secret_to_a_linter() -> None:
    """kube-linter's env-var-secret: a variable named (?i).*secret.* with a literal value is taken for a
    leaked secret. The operator's only such variable held a Secret's name; it is FINETUNE_STORAGE_CREDENTIALS now."""
    for docs in (render(), render("-f", str(ALL_OPTIONS))):
        container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        flagged = [e["name"] for e in container["env"] if re.match(r"(?i).*secret.*", e["name"]) and e.get("value")]
        assert flagged == []
