"""Pools and the pod policy's verdict on them, shared by the operator's check (tests/operator) and
the chart's ValidatingAdmissionPolicy on the real API server (tests/k8s/test_pod_template.py): both
must give exactly these lines, in this order."""

from __future__ import annotations

from typing import Any

IMAGE = "example.invalid/worker:1"
P = "spec.pools[evil]"
T = f"{P}.template.spec"
VOLUMES = "configMap, csi, downwardAPI, emptyDir, ephemeral, image, persistentVolumeClaim, projected, secret"

# The hostile pool of issue 14, as written then: it kept all of this through spec.parse and
# resources.deployment.
HOSTILE: dict[str, Any] = {
    "name": "evil", "image": "attacker.invalid/tool:latest", "command": ["sh", "-c", "nsenter -t 1 -m -u -i -n sh"],
    "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
    "podSecurityContext": {"runAsUser": 0},
    "priorityClassName": "system-node-critical",
    "env": [{"name": "STOLEN", "valueFrom": {"secretKeyRef": {"name": "other-team", "key": "password"}}}],
    "gpu": {"tolerations": [{"operator": "Exists"}],
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
}
HOSTILE_VIOLATIONS = [
    f"{P}.securityContext.privileged: must not be true (privileged container)",
    f"{P}.securityContext.capabilities.add: may add NET_BIND_SERVICE only, not SYS_ADMIN",
    f"{P}.securityContext.capabilities.drop: must include ALL",
    f"{P}.podSecurityContext.runAsUser: must not be 0 (root)",
    f"{P}.priorityClassName: system priority classes are for the cluster's own pods",
    f"{P}.gpu.tolerations: a toleration with operator Exists and no key tolerates every taint",
    f"{P}.gpu.nodeSelector[node-role.kubernetes.io/control-plane]: must not select control-plane nodes",
]


def evil(**template_spec: Any) -> dict[str, Any]:
    return {"name": "evil", "image": IMAGE, "template": {"spec": template_spec}}


REFUSED: dict[str, tuple[list[dict[str, Any]], list[str]]] = {
    "hostile": ([HOSTILE], HOSTILE_VIOLATIONS),
    "host-namespaces-paths-ports": ([evil(
        hostNetwork=True, hostIPC=True, hostPID=False,
        volumes=[{"name": "root", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}}],
        containers=[{"name": "side", "image": IMAGE, "ports": [{"containerPort": 80, "hostPort": 8080}]}])], [
        f"{T}.hostNetwork: must not be true (host namespaces)",
        f"{T}.hostIPC: must not be true (host namespaces)",
        f"{T}.volumes[root]: volume type not allowed (allowed: {VOLUMES})",
        f"{T}.containers[side].ports[80].hostPort: must be 0 or unset (host ports)",
    ]),
    "container-contexts": ([evil(
        containers=[{"name": "side", "image": IMAGE, "securityContext": {
            "allowPrivilegeEscalation": True, "capabilities": {"add": ["NET_BIND_SERVICE", "NET_ADMIN"],
                                                               "drop": ["ALL"]}}}],
        initContainers=[{"name": "init", "image": IMAGE, "securityContext": {
            "runAsNonRoot": False, "procMount": "Unmasked", "runAsUser": 0}}])], [
        f"{T}.containers[side].securityContext.allowPrivilegeEscalation: must not be true",
        f"{T}.containers[side].securityContext.capabilities.add: may add NET_BIND_SERVICE only, not NET_ADMIN",
        f"{T}.initContainers[init].securityContext.runAsNonRoot: must not be false",
        f"{T}.initContainers[init].securityContext.runAsUser: must not be 0 (root)",
        f"{T}.initContainers[init].securityContext.procMount: must be Default",
    ]),
    "profiles": ([{"name": "evil", "image": IMAGE, "template": {
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/side": "unconfined"}},
        "spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}, "seLinuxOptions": {"role": "sysadm_r"},
                                     "windowsOptions": {"hostProcess": True}},
                 "containers": [{"name": "side", "image": IMAGE, "securityContext": {
                     "appArmorProfile": {"type": "Unconfined"}, "seLinuxOptions": {"type": "spc_t"}}}]}}}], [
        f"{T}.containers[side].securityContext.appArmorProfile.type: must be RuntimeDefault or Localhost",
        f"{T}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost",
        f"{T}.containers[side].securityContext.seLinuxOptions.type: must be one of container_t, container_init_t, "
        "container_kvm_t, container_engine_t",
        f"{T}.securityContext.seLinuxOptions.role: must not be set",
        f"{T}.securityContext.windowsOptions.hostProcess: must not be true",
        f"{P}.template.metadata.annotations[container.apparmor.security.beta.kubernetes.io/side]: must be "
        "runtime/default or localhost/<profile>",
    ]),
    "sysctls-and-handlers": ([{**evil(
        securityContext={"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"},
                                     {"name": "kernel.msgmax", "value": "65536"}]},
        containers=[{"name": "side", "image": IMAGE,
                     "startupProbe": {"httpGet": {"host": "169.254.169.254", "path": "/", "port": 80}},
                     "lifecycle": {"preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 22}}}}]),
        "podSecurityContext": {"sysctls": [{"name": "kernel.sem", "value": "1"}]}}], [
        f"{P}.podSecurityContext.sysctls[kernel.sem]: not a safe sysctl",
        f"{T}.securityContext.sysctls[kernel.msgmax]: not a safe sysctl",
        f"{T}.containers[side].startupProbe.httpGet.host: must not be set",
        f"{T}.containers[side].lifecycle.preStop.tcpSocket.host: must not be set",
    ]),
    "template-tenancy": ([{"name": "fine", "image": IMAGE, "jobTypes": ["x"]}, evil(
        priorityClassName="system-cluster-critical", nodeName="control-plane-1",
        tolerations=[{"key": "node-role.kubernetes.io/master", "operator": "Exists"}, {"operator": "Exists"},
                     {"key": "dedicated", "operator": "Equal", "value": "batch"}],
        nodeSelector={"node-role.kubernetes.io/master": "", "zone": "a"})], [
        f"{T}.priorityClassName: system priority classes are for the cluster's own pods",
        f"{T}.tolerations: must not tolerate node-role.kubernetes.io/master",
        f"{T}.tolerations: a toleration with operator Exists and no key tolerates every taint",
        f"{T}.nodeSelector[node-role.kubernetes.io/master]: must not select control-plane nodes",
        f"{T}.nodeName: must not be set (it bypasses the scheduler)",
    ]),
}

# Pools the policy admits: everything a platform team needs, within the restricted standard.
RESTRICTED: dict[str, Any] = {
    "name": "cpu", "image": IMAGE, "concurrency": 4, "maxReplicas": 4,
    "template": {
        "metadata": {"labels": {"team": "search"}, "annotations": {"cost-center": "42"}},
        "spec": {
            "serviceAccountName": "worker",
            "imagePullSecrets": [{"name": "registry"}],
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
            "containers": [
                {"name": "worker", "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                 "env": [{"name": "MODEL_DIR", "value": "/dev/shm"}],
                 "readinessProbe": {"periodSeconds": 5}},
                {"name": "cloud-sql-proxy", "image": "example.invalid/cloud-sql-proxy:2",
                 "args": ["--port=5432", "project:region:instance"],
                 "securityContext": {"runAsUser": 65532},
                 "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}},
            ],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": {"team": "search"}}}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "priorityClassName": "batch",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db.internal"]}],
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        },
    },
}
ADMITTED: dict[str, list[dict[str, Any]]] = {
    "restricted-template": [RESTRICTED],
    "allowed-values": [{"name": "ok", "image": IMAGE,
                        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                            "seccompProfile": {"type": "Localhost", "localhostProfile": "w.json"}},
                        "podSecurityContext": {"runAsUser": 2000, "fsGroup": 2000},
                        "gpu": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
                        "template": {
                            "metadata": {"annotations": {
                                "container.apparmor.security.beta.kubernetes.io/worker": "runtime/default"}},
                            "spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.ping_group_range",
                                                                      "value": "0 1000"}],
                                                         "seLinuxOptions": {"type": "container_t", "level": "s0"}},
                                     "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}},
                                                 {"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}],
                                     "initContainers": [{"name": "fetch", "image": IMAGE,
                                                         "ports": [{"containerPort": 81, "hostPort": 0}]}]}}}],
}
