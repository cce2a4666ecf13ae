"""The Kubernetes API calls the operator makes itself (kopf does the watching and the events).

The official client is synchronous: each call runs in a worker thread, with a request timeout,
and returns the API's JSON as plain dicts (camelCase, exactly as ``kubectl get -o json``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .spec import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def invalid(self) -> bool:
        """The server refused the object itself (422: a field the API validation does not allow)."""
        return self.status == 422


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG). No retries
    inside a call: a failed call is retried by the next poll, and reported meanwhile."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.retries = 0
    if not configuration.verify_ssl:  # the kubeconfig asked for it: say it once, not per request
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return client.ApiClient(configuration)


class Kube:
    def __init__(self, api: client.ApiClient, timeout: float = 15.0) -> None:
        self.api = api
        self.timeout = timeout
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                resp = method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            except ApiException as exc:
                raise KubeError(exc.status or 0, _message(exc)) from None
            except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, reset, timed out, retries spent
                raise KubeError(0, f"{type(exc).__name__}: {exc}") from None
            return json.loads(resp.data) if resp.data else {}

        return await asyncio.to_thread(run)

    # -- secrets ----------------------------------------------------------------------------------

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One value of a Secret, decoded; ``KubeError`` 404 if the Secret or the key is missing."""
        secret = await self._call(self.core.read_namespaced_secret, name, namespace)
        data = secret.get("data") or {}
        if key not in data:
            raise KubeError(404, f'Secret "{name}" has no key "{key}"')
        return base64.b64decode(data[key]).decode().strip()

    # -- namespaces -------------------------------------------------------------------------------

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of namespace ``name`` (``get`` of that one namespace)."""
        found = await self._call(self.core.read_namespace, name)
        return dict((found.get("metadata") or {}).get("labels") or {})

    # -- deployments ------------------------------------------------------------------------------

    async def deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = await self._call(self.apps.list_namespaced_deployment, namespace, label_selector=label_selector)
        return list(found.get("items") or [])

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self.apps.create_namespaced_deployment, namespace, body)
        return result

    async def patch_deployment(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self.apps.patch_namespaced_deployment, name, namespace, ops,
                                                  _content_type=JSON_PATCH)
        return result

    async def delete_deployment(self, namespace: str, name: str) -> None:
        await self._call(self.apps.delete_namespaced_deployment, name, namespace,
                         propagation_policy="Background")

    # -- pods -------------------------------------------------------------------------------------

    async def pod_exists(self, namespace: str, name: str) -> bool:
        try:
            await self._call(self.core.read_namespaced_pod, name, namespace)
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        await self._call(self.core.patch_namespaced_pod, name, namespace,
                         {"metadata": {"annotations": annotations}}, _content_type=MERGE_PATCH)

    # -- the JobQueue's status --------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL,
                         name, {"status": status}, _content_type=MERGE_PATCH)

    async def jobqueues_served(self, namespace: str | None) -> bool:
        """Whether the API server serves the JobQueue resource (the CRD is installed)."""
        try:
            if namespace is None:
                await self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, limit=1)
            else:
                await self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                                 limit=1)
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    # -- leases (leader election) -----------------------------------------------------------------

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self._call(self.coordination.read_namespaced_lease, name, namespace)
        except KubeError as exc:
            if exc.not_found:
                return None
            raise
        return lease

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        lease: dict[str, Any] = await self._call(self.coordination.create_namespaced_lease, namespace, body)
        return lease

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with the body's resourceVersion: ``KubeError`` 409 if someone else wrote it first."""
        lease: dict[str, Any] = await self._call(self.coordination.replace_namespaced_lease, name, namespace, body)
        return lease

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call,unused-ignore]


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)
