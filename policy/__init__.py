"""The OpenHands guardrails, a CrossGuard policy pack: its name and its policies, in order.

One module per concern, each saying what it guards:

* ``policy.data``: keys secret and non-blank, state encrypted, one writer per state volume, volumes kept;
* ``policy.exposure``: TLS at every entry, nothing else open to the world, IMDSv2, NetworkPolicy;
* ``policy.workload``: health checks, pod hardening, resource limits, log retention, pinned images;
* ``policy.resources``: the resource types and inspection helpers the three share (no policy);
* ``policy.offline``: Pulumi's analyzer without the engine (``python -m components check`` and the tests).

``policy/__main__.py`` only wraps ``POLICIES`` in a ``PolicyPack`` (constructing one starts a gRPC
server and blocks), so everything else imports this package instead.
"""

from __future__ import annotations

from collections.abc import Callable

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

from policy import data, exposure, workload

PACK_NAME = "openhands-guardrails"
CONFIGURABLE = ("image-pinned", "data-protected")

MANDATORY = EnforcementLevel.MANDATORY
ADVISORY = EnforcementLevel.ADVISORY


def _resource(
    name: str,
    description: str,
    fn: Callable[..., None],
    level: EnforcementLevel = MANDATORY,
    schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=fn, enforcement_level=level, config_schema=schema
    )


POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _resource(
        "no-plain-secrets",
        "No OH_* key or other secret in ECS `environment`, a Kubernetes env `value`, "
        "a ConfigMap, or Docker env not marked secret.",
        data.no_plain_secrets,
    ),
    _resource("session-key-not-empty", "A session API key value is never empty.", data.session_key_not_empty),
    _resource(
        "alb-listener-https",
        "ALB listeners are HTTPS with a certificate; port 80 may only redirect.",
        exposure.alb_listener_https,
    ),
    _resource(
        "ingress-tls",
        "Every Ingress has TLS for every host; every Gateway listener terminates TLS.",
        exposure.ingress_tls,
    ),
    _resource(
        "docker-publish-only-tls-proxy",
        "The Docker host is published only through the TLS proxy.",
        exposure.docker_publish_only_tls_proxy,
    ),
    _resource(
        "agent-server-health-checks",
        "Agent-server workloads have health checks: target-group path, "
        "probes, Docker healthcheck, Modal startup timeout.",
        workload.agent_server_health_checks,
    ),
    _resource("storage-encrypted", "EFS, EBS and instance volumes are encrypted.", data.storage_encrypted),
    _resource("efs-transit-encryption", "EFS task volumes use transit encryption.", data.efs_transit_encryption),
    _resource(
        "no-world-open-ports",
        "No security group opens 22 or any non-web port to 0.0.0.0/0 or ::/0.",
        exposure.no_world_open_ports,
        schema=exposure.ALLOWED_PORTS_SCHEMA,
    ),
    _resource("imdsv2-required", "Instances require IMDSv2.", exposure.imdsv2_required),
    _resource(
        "single-writer", "One agent server per state volume: one replica, no overlapping rollout.", data.single_writer
    ),
    StackValidationPolicy(
        name="one-workload-per-volume",
        description="No two agent-server workloads mount the same state volume, claim or EFS access point.",
        validate=data.one_workload_per_volume,
        enforcement_level=MANDATORY,
    ),
    _resource("modal-single-container", "Modal max_containers is 1.", data.modal_single_container),
    _resource(
        "k8s-pod-hardening",
        "Agent-server pods run as non-root, without privilege escalation and with all capabilities dropped.",
        workload.k8s_pod_hardening,
    ),
    StackValidationPolicy(
        name="k8s-network-policy",
        description="Every Kubernetes agent-server workload is selected by a NetworkPolicy.",
        validate=exposure.k8s_network_policy,
        enforcement_level=MANDATORY,
    ),
    _resource("resource-limits", "Agent-server workloads have CPU and memory limits.", workload.resource_limits),
    _resource("log-retention", "Log groups have a retention.", workload.log_retention),
    # Configurable per environment: advisory by default (dev), mandatory in prod via config.prod.json.
    _resource(
        "image-pinned",
        "Images are pinned by a version tag or a digest, never latest.",
        workload.image_pinned_policy,
        level=ADVISORY,
    ),
    _resource(
        "data-protected", "Data volumes are protected or retained on destroy.", data.data_protected, level=ADVISORY
    ),
]

BY_NAME = {p.name: p for p in POLICIES}
