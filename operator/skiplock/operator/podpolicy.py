"""The tenancy guard: what a pool may not ask of its pods unless its namespace allows it.

The rules are the restricted Pod Security Standard (as the pod-security admission of Kubernetes
1.37 checks it) over everything a pool puts into its pods, plus three tenancy rules: no system
priority class, no toleration of every taint or of the control plane's, no control-plane
nodeSelector or nodeName. The chart's ValidatingAdmissionPolicy
(charts/skiplock/templates/policy.yaml) holds the same rules in CEL, with the same messages; the
operator checks them again before it writes a Deployment (defence in depth: a cluster without the
policy, or a JobQueue admitted before it existed). A namespace labelled ``EXEMPT_LABEL=true`` is
exempt from both.

Only what the pool's spec sets explicitly can violate a rule: what it leaves unset, the operator
fills in with the restricted values (``podtemplate``). Each violation is one ``path: reason`` line;
the path names the field in the JobQueue (pools and containers by name).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EXEMPT_LABEL = "skiplock.dev/unrestricted-pools"
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes"})
VOLUME_TYPES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                "projected", "secret")
SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t", "container_engine_t")
PROFILES = ("RuntimeDefault", "Localhost")
CONTROL_PLANE = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
APPARMOR = "container.apparmor.security.beta.kubernetes.io/"
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
LIFECYCLE = ("postStart", "preStop")


@dataclass(frozen=True)
class Container:
    path: str  # the container, e.g. spec.pools[cpu].template.spec.containers[proxy]
    sc: Mapping[str, Any]  # its securityContext (at path + ".securityContext")
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Pods:
    """What the rules read of the pools, flattened across them as the admission policy's variables."""

    pools: Sequence[Mapping[str, Any]]
    containers: list[Container]  # the worker's pool-level securityContext, template containers, initContainers
    pod_contexts: list[tuple[str, Mapping[str, Any]]]  # podSecurityContext, template.spec.securityContext
    specs: list[tuple[str, Mapping[str, Any]]]  # each pool's template.spec

    @property
    def contexts(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [(f"{c.path}.securityContext", c.sc) for c in self.containers] + self.pod_contexts

    @classmethod
    def of(cls, pools: Sequence[Mapping[str, Any]]) -> Pods:
        containers, pod_contexts, specs = [], [], []
        for pool in pools:
            here = f"spec.pools[{pool['name']}]"
            spec = (pool.get("template") or {}).get("spec") or {}
            containers.append(Container(here, pool.get("securityContext") or {}, {}))
            for kind in ("containers", "initContainers"):
                for c in spec.get(kind) or []:
                    path = f"{here}.template.spec.{kind}[{c.get('name')}]"
                    containers.append(Container(path, c.get("securityContext") or {}, c))
            pod_contexts += [(f"{here}.podSecurityContext", pool.get("podSecurityContext") or {}),
                             (f"{here}.template.spec.securityContext", spec.get("securityContext") or {})]
            specs.append((f"{here}.template.spec", spec))
        return cls(list(pools), containers, pod_contexts, specs)


def violations(pools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every rule the pools break (each ``path: reason``), in the order of the admission policy's message."""
    pods = Pods.of(pools)
    return [line for rule in RULES for line in rule(pods)]


def host_namespaces(pods: Pods) -> Iterator[str]:
    for path, spec in pods.specs:
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field) is True:
                yield f"{path}.{field}: must not be true (host namespaces)"


def privileged(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        if c.sc.get("privileged") is True:
            yield f"{c.path}.securityContext.privileged: must not be true (privileged container)"


def privilege_escalation(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        if c.sc.get("allowPrivilegeEscalation") is True:
            yield f"{c.path}.securityContext.allowPrivilegeEscalation: must not be true"


def capabilities(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        caps = c.sc.get("capabilities")
        if caps is None:
            continue
        added = [a for a in caps.get("add") or [] if a != "NET_BIND_SERVICE"]
        if added:
            yield f"{c.path}.securityContext.capabilities.add: may add NET_BIND_SERVICE only, not {', '.join(added)}"
        if "ALL" not in (caps.get("drop") or []):
            yield f"{c.path}.securityContext.capabilities.drop: must include ALL"


def run_as_root(pods: Pods) -> Iterator[str]:
    for path, sc in pods.contexts:
        if sc.get("runAsNonRoot") is False:
            yield f"{path}.runAsNonRoot: must not be false"
        if sc.get("runAsUser") == 0:
            yield f"{path}.runAsUser: must not be 0 (root)"


def profiles(pods: Pods) -> Iterator[str]:
    for path, sc in pods.contexts:
        for field in ("seccompProfile", "appArmorProfile"):
            kind = (sc.get(field) or {}).get("type")
            if kind is not None and kind not in PROFILES:
                yield f"{path}.{field}.type: must be RuntimeDefault or Localhost"


def selinux(pods: Pods) -> Iterator[str]:
    for path, sc in pods.contexts:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type") and options["type"] not in SELINUX_TYPES:
            yield f"{path}.seLinuxOptions.type: must be one of {', '.join(SELINUX_TYPES)}"
        for field in ("user", "role"):
            if options.get(field):
                yield f"{path}.seLinuxOptions.{field}: must not be set"


def host_process(pods: Pods) -> Iterator[str]:
    for path, sc in pods.contexts:
        if (sc.get("windowsOptions") or {}).get("hostProcess") is True:
            yield f"{path}.windowsOptions.hostProcess: must not be true"


def proc_mount(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        if c.sc.get("procMount", "Default") != "Default":
            yield f"{c.path}.securityContext.procMount: must be Default"


def sysctls(pods: Pods) -> Iterator[str]:
    for path, sc in pods.pod_contexts:
        for sysctl in sc.get("sysctls") or []:
            if sysctl.get("name") not in SAFE_SYSCTLS:
                yield f"{path}.sysctls[{sysctl.get('name')}]: not a safe sysctl"


def volumes(pods: Pods) -> Iterator[str]:
    for path, spec in pods.specs:
        for volume in spec.get("volumes") or []:
            if not any(kind in volume for kind in VOLUME_TYPES):
                yield (f"{path}.volumes[{volume.get('name')}]: volume type not allowed (allowed: "
                       f"{', '.join(VOLUME_TYPES)})")


def host_ports(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        for port in c.body.get("ports") or []:
            if port.get("hostPort", 0) != 0:
                yield f"{c.path}.ports[{port.get('containerPort')}].hostPort: must be 0 or unset (host ports)"


def host_handlers(pods: Pods) -> Iterator[str]:
    for c in pods.containers:
        lifecycle = c.body.get("lifecycle") or {}
        hooks = [(h, c.body.get(h) or {}) for h in PROBES] + [(f"lifecycle.{h}", lifecycle.get(h) or {})
                                                               for h in LIFECYCLE]
        for name, hook in hooks:
            for action in ("httpGet", "tcpSocket"):
                if (hook.get(action) or {}).get("host"):
                    yield f"{c.path}.{name}.{action}.host: must not be set"


def apparmor_annotations(pods: Pods) -> Iterator[str]:
    for pool in pods.pools:
        annotations = ((pool.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        for key, value in annotations.items():
            if key.startswith(APPARMOR) and value != "runtime/default" and not value.startswith("localhost/"):
                yield (f"spec.pools[{pool['name']}].template.metadata.annotations[{key}]: must be runtime/default "
                       "or localhost/<profile>")


def priority(pods: Pods) -> Iterator[str]:
    for pool in pods.pools:
        here = f"spec.pools[{pool['name']}]"
        spec = (pool.get("template") or {}).get("spec") or {}
        for where, name in ((f"{here}.priorityClassName", pool.get("priorityClassName")),
                            (f"{here}.template.spec.priorityClassName", spec.get("priorityClassName"))):
            if name and str(name).startswith("system-"):
                yield f"{where}: system priority classes are for the cluster's own pods"


def _given(pool: Mapping[str, Any], field: str) -> list[tuple[str, Any]]:
    """A GPU pool's own ``gpu.<field>``, then the template's."""
    here = f"spec.pools[{pool['name']}]"
    spec = (pool.get("template") or {}).get("spec") or {}
    return [(f"{here}.gpu.{field}", (pool.get("gpu") or {}).get(field)),
            (f"{here}.template.spec.{field}", spec.get(field))]


def tolerations(pods: Pods) -> Iterator[str]:
    for pool in pods.pools:
        for where, listed in _given(pool, "tolerations"):
            for t in listed or []:
                key = t.get("key") or ""
                if not key and t.get("operator") == "Exists":
                    yield f"{where}: a toleration with operator Exists and no key tolerates every taint"
                elif key in CONTROL_PLANE:
                    yield f"{where}: must not tolerate {key}"


def placement(pods: Pods) -> Iterator[str]:
    for pool in pods.pools:
        for where, selector in _given(pool, "nodeSelector"):
            for key in CONTROL_PLANE:
                if key in (selector or {}):
                    yield f"{where}[{key}]: must not select control-plane nodes"
    for path, spec in pods.specs:
        if spec.get("nodeName"):
            yield f"{path}.nodeName: must not be set (it bypasses the scheduler)"


RULES = (host_namespaces, privileged, privilege_escalation, capabilities, run_as_root, profiles, selinux,
         host_process, proc_mount, sysctls, volumes, host_ports, host_handlers, apparmor_annotations, priority,
         tolerations, placement)
