"""Test-only stand-in for an ingress controller's status publisher (``--publish-status-address``).

No ingress controller runs in the throwaway cluster, and pulumi-kubernetes' Ingress await waits
for ``status.loadBalancer.ingress``: this thread writes that status on every Ingress of one
namespace, as a controller would, and nothing else (no traffic is routed).
"""

from __future__ import annotations

import json
import threading
from typing import Any

STATUS_IP = "192.0.2.10"  # TEST-NET-1: the address a controller would publish; nothing listens there


class IngressStatus(threading.Thread):
    def __init__(self, client: Any, namespace: str, interval: float = 0.3) -> None:
        super().__init__(daemon=True, name=f"ingress-status-{namespace}")
        self.client, self.namespace, self.interval = client, namespace, interval
        self.done = threading.Event()

    def run(self) -> None:
        path = f"/apis/networking.k8s.io/v1/namespaces/{self.namespace}/ingresses"
        body = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": STATUS_IP}]}}})
        while not self.done.wait(self.interval):
            try:
                for ing in (self.client.get(path) or {}).get("items", []):
                    if not (ing.get("status", {}).get("loadBalancer") or {}).get("ingress"):
                        self.client.request("PATCH", f"{path}/{ing['metadata']['name']}/status", body,
                                            content_type="application/merge-patch+json")
            except Exception:  # noqa: BLE001 - the namespace may not exist yet: try again next round
                continue

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
