"""The Helm chart, rendered and linted by Helm's own engine (helm-python-sdk, Helm v4, in-process).

Every rendered object is checked against the Kubernetes schemas of a current release
(kubernetes-validate, strict: unknown fields fail), for the default values and a matrix of value
sets; values.schema.json must refuse bad values before anything renders.
"""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import kubernetes_validate
import msgspec
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from nodeguard.policy import Mode, Spec, load_policy
from tests.support.chart import CHART, container, host_mounts, objects, one, render

KUBE_VERSION = latest_version()  # the newest Kubernetes whose schemas kubernetes-validate ships
OLDEST_SUPPORTED = "1.30.0"  # Chart.yaml's kubeVersion floor (securityContext.appArmorProfile)

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "enforce-with-policy": {
        "mode": "enforce",
        "policy": {
            "controls": {
                "dockerGroup": {"allowedMembers": ["ci-runner"]},
                "socket": {"mode": "enforce"},
                "daemonConfig": {"rules": {"userland-proxy": "observe"}},
                "firewall": {"ports": [{"port": 2376, "allow": ["192.0.2.0/24", "2001:db8::/32"],
                                        "action": "reject"}]},
            },
            "agent": {"resyncSeconds": 30},
        },
    },
    "otlp-headers-and-mtls": {
        "otlp": {"endpoint": "https://otel-collector.observability.svc:4317", "protocol": "grpc",
                 "headers": "authorization=Bearer abc,x-tenant=ops",
                 "tls": {"secretName": "otlp-client", "clientCertificate": True}},
    },
    "otlp-existing-secret": {
        "otlp": {"endpoint": "http://collector:4318", "protocol": "http/protobuf",
                 "existingSecret": {"name": "siem-token", "headersKey": "otlp-headers"},
                 "tls": {"insecure": True}},
    },
    "no-cluster-view": {
        "kube": {"enabled": False}, "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "preexisting"},
    },
    "tuned": {
        "fullnameOverride": "guard", "updateStrategy": {"maxUnavailable": "25%"},
        "appArmorProfile": {"type": "Localhost", "localhostProfile": "nodeguard"},
        "image": {"repository": "registry.example/nodeguard", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}], "podAnnotations": {"team": "platform"},
        "podLabels": {"tier": "node"}, "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "128Mi"}},
        "logLevel": "debug", "hostPID": False,
    },
    # What a platform team composing the chart sets: a pinned image, metrics scraped by the
    # Prometheus Operator, the own-node admission policy, SELinux, and the extra* hooks.
    "composed": {
        "global": {"imageRegistry": "registry.example", "anything": {"nested": True}}, "enabled": True,
        "image": {"repository": "registry.example/nodeguard", "digest": "sha256:" + "0123456789abcdef" * 4},
        "metrics": {"enabled": True, "port": 9500},
        "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "kube-prometheus-stack"}},
        "rbac": {"restrictToOwnNode": True},
        "containerSecurityContext": {"seLinuxOptions": {"type": "spc_t", "level": "s0"}},
        "extraArgs": ["--otlp-timeout", "5"],
        "extraEnvFrom": [{"secretRef": {"name": "nodeguard-env"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
    },
}
# Kinds whose schemas are not Kubernetes' own (a CRD): kubernetes-validate has none to check against.
FOREIGN_KINDS = {"ServiceMonitor"}


@pytest.fixture(params=sorted(VALUE_SETS))
def values(request: pytest.FixtureRequest) -> dict[str, Any]:
    return copy.deepcopy(VALUE_SETS[request.param])


def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Warnings and errors fail; the chart has an icon, so not even the informational message is left.
    assert [m for m in report["messages"] if m["severity"] >= 1] == []


def test_rendered_objects_pass_the_kubernetes_schemas(values: dict[str, Any]) -> None:
    objs = objects(values)
    assert {o["kind"] for o in objs} >= {"DaemonSet", "ConfigMap"}
    for obj in objs:
        for version in (KUBE_VERSION, OLDEST_SUPPORTED):
            if obj["kind"] not in FOREIGN_KINDS:
                kubernetes_validate.validate(obj, version, strict=True)
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, (obj["kind"], key)


def test_the_policy_configmap_is_a_policy_the_agent_accepts(values: dict[str, Any], tmp_path: Any) -> None:
    cm = one(objects(values), "ConfigMap", "-policy")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(cm["data"]["policy.yaml"])
    policy = load_policy(policy_file)
    assert policy.spec.mode == Mode(values.get("mode", "observe"))
    if values.get("policy"):
        doc = yaml.safe_load(cm["data"]["policy.yaml"])
        assert doc["spec"]["controls"] == values["policy"]["controls"]


def test_daemonset_runs_everywhere_with_least_privilege() -> None:
    ds = one(objects(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert "hostIPC" not in pod
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"],
                                  "add": ["CHOWN", "FOWNER", "DAC_READ_SEARCH", "NET_ADMIN", "NET_RAW",
                                          "SYS_NICE"]}
    # What the pod grants is exactly what the agent keeps after its own drop at start.
    from nodeguard.privileges import AGENT_CAPABILITIES

    assert set(sc["capabilities"]["add"]) == set(AGENT_CAPABILITIES)
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert "ports" not in c  # nothing listens on the node
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["exec"]["command"][:3] == ["python", "-m", "nodeguard.health"], probe
        assert set(c[probe]) - {"exec", "periodSeconds", "timeoutSeconds", "failureThreshold"} == set()
    assert c["command"] == ["nodeguard"]
    assert c["args"] == ["run", "--host-root", "/host", "--policy", "/etc/nodeguard/policy.yaml",
                         "--state-dir", "/host/var/lib/nodeguard", "--events-file", "-"]
    env = {e["name"]: e for e in c["env"]}
    # The downward API: what the agent's OpenTelemetry resource says about itself (k8s.*).
    for name, field in (("NODE_NAME", "spec.nodeName"), ("POD_NAME", "metadata.name"),
                        ("POD_NAMESPACE", "metadata.namespace"), ("POD_UID", "metadata.uid")):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field
    assert "POD_IP" not in env and "--metrics-bind-address" not in c["args"]  # metrics are opt-in


def test_host_mounts_are_exactly_what_the_agent_touches() -> None:
    ds = one(objects(), "DaemonSet")
    mounts = host_mounts(ds)
    assert sorted(mounts.values()) == sorted(["/etc", "/etc/docker", "/run", "/run/xtables.lock",
                                              "/var/lib/nodeguard", "/lib/systemd/system",
                                              "/usr/lib/systemd/system"])
    read_only = {m["mountPath"] for m in container(ds)["volumeMounts"] if m.get("readOnly")}
    assert read_only == {"/host/lib/systemd/system", "/host/usr/lib/systemd/system", "/etc/nodeguard"}
    # Each host path appears at --host-root + itself: the agent resolves host paths through the root.
    for mount_path, host_path in mounts.items():
        assert mount_path == "/host" + host_path
    pod = ds["spec"]["template"]["spec"]
    types = {v["hostPath"]["path"]: v["hostPath"].get("type", "") for v in pod["volumes"] if "hostPath" in v}
    assert types["/run/xtables.lock"] == "FileOrCreate" and types["/var/lib/nodeguard"] == "DirectoryOrCreate"
    # The policy is mounted as a folder (no subPath): the kubelet's ..data swap reaches the agent.
    policy_mount = next(m for m in container(ds)["volumeMounts"] if m["name"] == "policy")
    assert policy_mount == {"name": "policy", "mountPath": "/etc/nodeguard", "readOnly": True}
    assert all("subPath" not in m for m in container(ds)["volumeMounts"])
    # Probes and args name the same state dir as the mount.
    probe = container(ds)["livenessProbe"]["exec"]["command"]
    assert probe[probe.index("--state-dir") + 1] == "/host/var/lib/nodeguard"


def test_the_audit_log_is_mounted_read_only_only_when_asked() -> None:
    """Attribution reads the node's audit log through the host root: an opt-in, read-only mount at
    /host + the folder, where the policy's default (auditd.conf's log_file) finds it."""
    ds = one(objects({"attribution": {"auditLog": {"mount": True}}}), "DaemonSet")
    mounts = host_mounts(ds)
    assert mounts["/host/var/log/audit"] == "/var/log/audit"
    mount = next(m for m in container(ds)["volumeMounts"] if m["mountPath"] == "/host/var/log/audit")
    assert mount.get("readOnly") is True
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["type"] == "Directory"  # never created on a node that has no auditd
    assert "/var/log/audit" not in host_mounts(one(objects(), "DaemonSet")).values()


def test_changing_mode_or_policy_does_not_restart_a_pod() -> None:
    """`helm upgrade --set mode=enforce` changes only the ConfigMap: the pod template is identical,
    so the DaemonSet controller rolls nothing and the running agent hot-reloads its policy."""
    before = objects()
    after = objects({"mode": "enforce", "policy": {"controls": {"dockerGroup": {"allowedMembers": ["x"]}}}})
    assert one(before, "DaemonSet") == one(after, "DaemonSet")
    assert one(before, "ConfigMap") != one(after, "ConfigMap")


# Each Kubernetes API call nodeguard/events/kube.py makes, and the RBAC rule it needs: (resource, verb).
API_CALL_RBAC = {
    "read_node": ("nodes", "get"),
    "patch_node_status": ("nodes/status", "patch"),
    "create_namespaced_event": ("events", "create"),
    "patch_namespaced_event": ("events", "patch"),
}


def test_every_api_call_of_the_agent_has_its_rule_and_no_rule_lacks_a_call() -> None:
    """Read from kube.py's source: a new API call without RBAC, or RBAC left for a removed call, fails."""
    import ast
    import inspect

    import nodeguard.events.kube

    tree = ast.parse(inspect.getsource(nodeguard.events.kube))
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "api"}
    assert calls == set(API_CALL_RBAC)
    objs = objects()
    granted = {(res, verb) for role in (one(objs, "ClusterRole"), one(objs, "Role", "-events"))
               for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert granted == set(API_CALL_RBAC.values())


def test_rbac_allows_only_what_the_cluster_view_calls() -> None:
    objs = objects()
    role = one(objs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ]
    events = one(objs, "Role", "-events")
    assert events["metadata"]["namespace"] == "default"
    assert events["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
    for binding in (one(objs, "ClusterRoleBinding"), one(objs, "RoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ng-nodeguard", "namespace": "nodeguard"}]


def test_without_the_cluster_view_there_is_no_rbac_and_no_token() -> None:
    objs = objects(VALUE_SETS["no-cluster-view"])
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                 "ServiceAccount")]
    pod = one(objs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "preexisting"


def test_otlp_settings_become_the_opentelemetry_variables() -> None:
    objs = objects(VALUE_SETS["otlp-headers-and-mtls"])
    env = {e["name"]: e for e in container(one(objs, "DaemonSet"))["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "https://otel-collector.observability.svc:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    secret = one(objs, "Secret", "-otlp")
    assert secret["stringData"] == {"headers": "authorization=Bearer abc,x-tenant=ops"}
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "headers"}
    assert "value" not in env["OTEL_EXPORTER_OTLP_HEADERS"]  # the token never sits in the pod spec
    tls_dir = "/etc/nodeguard-otlp-tls"
    assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"]["value"] == f"{tls_dir}/ca.crt"
    assert env["OTEL_EXPORTER_OTLP_CLIENT_KEY"]["value"] == f"{tls_dir}/tls.key"

    objs = objects(VALUE_SETS["otlp-existing-secret"])
    assert not [o for o in objs if o["kind"] == "Secret"]
    env = {e["name"]: e for e in container(one(objs, "DaemonSet"))["env"]}
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {"name": "siem-token",
                                                                               "key": "otlp-headers"}
    assert env["OTEL_EXPORTER_OTLP_INSECURE"]["value"] == "true"


def test_notes_name_the_kubectl_view_of_every_node() -> None:
    notes = next(docs[0]["text"] for path, docs in render().items() if path.endswith("NOTES.txt"))
    assert 'conditions[?(@.type=="DockerDaemonCompliant")].status' in notes
    assert "nodeguard firewall remove" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "metrics" not in notes
    notes = next(docs[0]["text"] for path, docs in render(VALUE_SETS["composed"]).items()
                 if path.endswith("NOTES.txt"))
    assert "services/ng-nodeguard-metrics:metrics/proxy/metrics" in notes


def test_notes_live_only_where_helm_renders_them() -> None:
    """Helm renders templates/NOTES.txt; a NOTES.txt at the chart root is silently never shown."""
    assert not (CHART / "NOTES.txt").exists()
    assert [p for p in render() if p.endswith("NOTES.txt")] == ["nodeguard/templates/NOTES.txt"]


def test_a_probe_shorter_than_the_resync_period_is_refused() -> None:
    """The agent may write its heartbeat only once per resync: a shorter probe limit kills healthy pods."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as refused:
        chart.render(values={"policy": {"agent": {"resyncSeconds": 300}}}, name="ng", namespace="nodeguard")
    assert "maxHeartbeatAgeSeconds" in str(refused.value)
    objects({"policy": {"agent": {"resyncSeconds": 300}}, "probes": {"maxHeartbeatAgeSeconds": 900}})


def test_the_schema_knows_every_policy_spec_key_but_mode() -> None:
    """The values schema names the policy's spec keys; the agent's model is the source of truth."""
    with helm.Chart.load(CHART) as chart:
        schema = chart.schema
    assert schema is not None
    spec_keys = {f.encode_name for f in msgspec.structs.fields(Spec)}
    assert set(schema["properties"]["policy"]["properties"]) == spec_keys - {"mode"}


@pytest.mark.parametrize("bad", [
    {"mode": "enforcing"},
    {"mode": "off"},
    {"policy": {"mode": "enforce"}},  # one place for the mode
    {"policy": {"controls": {"socket": {"mode": "enforcing"}}}},
    {"policy": {"spec": {}}},
    {"updateStrategy": {"maxUnavailable": 0}},
    {"updateStrategy": {"maxUnavailable": "150%"}},
    {"capabilities": ["SYS_ADMIN"]},
    {"capabilities": ["NET_ADMIN", "NET_ADMIN"]},
    {"otlp": {"protocol": "http/json"}},
    {"otlp": {"endpoint": "collector:4317"}},
    {"appArmorProfile": {"type": "Localhost"}},
    {"logLevel": "verbose"},
    {"kube": {"eventNamespace": "Not_A_Namespace"}},
    {"privileged": True},
    {"image": {"repository": "x", "digest": "latest"}},
    {"image": {"repository": "x", "digest": "sha256:abc"}},
    {"metrics": {"port": 0}},
    {"metrics": {"enable": True}},
    {"serviceMonitor": {"interval": "often"}},
    {"containerSecurityContext": {"seLinuxOptions": {"typ": "spc_t"}}},
    {"containerSecurityContext": {"privileged": True}},
    {"extraArgs": [["--nested"]]},
    {"extraVolumeMounts": [{"name": "no-path"}]},
    {"enabled": "yes"},
    {"globals": {}},  # `global` is Helm's; a misspelling is still refused
], ids=lambda v: str(v))
def test_the_values_schema_refuses_bad_values(bad: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values=bad, name="ng", namespace="nodeguard")
    assert next(iter(bad)) in str(refused.value)  # the message names the offending value
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values({}))  # the defaults themselves pass


def test_the_digest_pins_the_image_by_content() -> None:
    digest = "sha256:" + "ab" * 32
    c = container(one(objects({"image": {"repository": "r.example/ng", "tag": "9.9", "digest": digest}}), "DaemonSet"))
    assert c["image"] == f"r.example/ng@{digest}"
    assert container(one(objects({"image": {"repository": "r.example/ng", "tag": "9.9"}}), "DaemonSet"))[
        "image"] == "r.example/ng:9.9"


def test_the_extra_hooks_land_where_kubernetes_reads_them() -> None:
    values = VALUE_SETS["composed"]
    ds = one(objects(values), "DaemonSet")
    c = container(ds)
    assert c["args"][-2:] == values["extraArgs"]  # after the chart's own, so they can override none silently
    assert c["envFrom"] == values["extraEnvFrom"]
    assert values["extraVolumes"][0] in ds["spec"]["template"]["spec"]["volumes"]
    assert values["extraVolumeMounts"][0] in c["volumeMounts"]
    assert c["securityContext"]["seLinuxOptions"] == {"type": "spc_t", "level": "s0"}
    assert "seLinuxOptions" not in container(one(objects(), "DaemonSet"))["securityContext"]


def test_metrics_bind_the_pods_own_address_and_are_scraped_per_node() -> None:
    objs = objects(VALUE_SETS["composed"])
    c = container(one(objs, "DaemonSet"))
    env = {e["name"]: e for e in c["env"]}
    # Never 0.0.0.0: the downward API's pod IP (the node's own under hostNetwork), expanded by the kubelet.
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    i = c["args"].index("--metrics-bind-address")
    assert c["args"][i + 1] == "$(POD_IP):9500"
    assert c["ports"] == [{"name": "metrics", "containerPort": 9500, "hostPort": 9500, "protocol": "TCP"}]
    service = one(objs, "Service", "-metrics")
    assert service["spec"]["clusterIP"] == "None"  # one target per node, not one at random
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9500, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == one(objs, "DaemonSet")["spec"]["selector"]["matchLabels"]
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(service["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["spec"]["endpoints"][0]["interval"] == "1m"
    # Only one Service of the release carries those labels: the ServiceMonitor selects nothing else.
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == ["ng-nodeguard-metrics"]


def test_a_service_monitor_without_metrics_is_refused() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as refused:
        chart.render(values={"serviceMonitor": {"enabled": True}}, name="ng", namespace="nodeguard")
    assert "metrics.enabled" in str(refused.value)


def test_own_node_policy_is_opt_in_and_names_the_agents_service_account() -> None:
    assert not [o for o in objects() if o["kind"].startswith("ValidatingAdmissionPolicy")]
    objs = objects(VALUE_SETS["composed"])
    policy = one(objs, "ValidatingAdmissionPolicy")
    binding = one(objs, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes/status"]}]
    (match,) = policy["spec"]["matchConditions"]
    assert match["expression"] == 'request.userInfo.username == "system:serviceaccount:nodeguard:ng-nodeguard"'
    # Without RBAC or the cluster view there is no token to restrict.
    assert not [o for o in objects({"rbac": {"restrictToOwnNode": True, "create": False}})
                if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_as_a_subchart_with_a_condition(tmp_path: Any) -> None:
    """The Argo CD / Flux pattern: an umbrella chart depends on nodeguard with `condition:` and sets
    `global`. Helm then hands the subchart `global` and `enabled`; the strict schema accepts both."""
    import shutil

    umbrella = tmp_path / "platform"
    shutil.copytree(CHART, umbrella / "charts" / "nodeguard")
    (umbrella / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0", "kubeVersion": ">=1.30.0-0",
        "dependencies": [{"name": "nodeguard", "version": "0.1.0", "condition": "nodeguard.enabled"}]}))
    (umbrella / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": "registry.example", "storageClass": "fast"},
        "nodeguard": {"enabled": True, "mode": "enforce"}}))

    def kinds(values: dict[str, Any]) -> list[str]:
        with helm.Chart.load(umbrella) as chart:
            out = chart.render(values=values, name="platform", namespace="infra", is_install=True)
        return sorted(o["kind"] for path, text in out.items() if not path.endswith("NOTES.txt")
                      for o in yaml.safe_load_all(text) if o)

    assert "DaemonSet" in kinds({})
    assert kinds({"nodeguard": {"enabled": False}}) == []
    # Still strict below the two keys Helm adds: a typo in the subchart's values is refused.
    with helm.Chart.load(umbrella) as chart, pytest.raises(helm.HelmValuesError) as refused:
        chart.render(values={"nodeguard": {"mdoe": "enforce"}}, name="platform", namespace="infra")
    assert "mdoe" in str(refused.value)


def test_the_chart_readme_is_generated_from_the_current_values() -> None:
    """charts/nodeguard/README.md is values.yaml's comments as a table: stale means someone edited one."""
    from tests.support import chart_readme

    assert chart_readme.README.read_text() == chart_readme.render(), (
        "charts/nodeguard/README.md is stale: run .venv/bin/python -m tests.support.chart_readme")
    text = chart_readme.README.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ("image.digest", "extraVolumes", "extraVolumeMounts", "extraEnvFrom", "extraArgs", "metrics.port",
                "serviceMonitor.enabled", "rbac.restrictToOwnNode", "containerSecurityContext.seLinuxOptions"):
        assert f"| `{key}` |" in text, key
    assert set(values) <= {line.split("`")[1].split(".")[0] for line in text.splitlines() if line.startswith("| `")}


def test_the_chart_has_an_icon_it_ships() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["icon"].endswith("/charts/nodeguard/icon.svg")
    assert (CHART / "icon.svg").read_text().startswith("<svg")
