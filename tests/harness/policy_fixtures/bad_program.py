"""A program that renders violating resources, for ``check.check_stack(stack, program=bad_program.run)``.

Raw ``CustomResource``s with hand-written props, the way someone might write them without our
models: an agent server published straight on 8000 with its key in plain env, an Ingress with
no TLS and a misspelt field, a Caddyfile that does not parse, an open SSH rule.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components import contract


def run() -> dict[str, Any]:
    pulumi.CustomResource("docker:index/container:Container", "default-agent", {
        "name": "agent",
        "image": f"{contract.IMAGE_REPOSITORY}:latest",
        "ports": [{"internal": contract.PORT, "external": contract.PORT}],
        "envs": ["OH_SESSION_API_KEYS_0=plain-key", "OH_SECRET_KEY=plain-secret"],
        "healthcheck": {"tests": list(contract.HEALTHCHECK_COMMAND)},
        "memory": 2048, "cpus": "1",
    })
    pulumi.CustomResource("docker:index/container:Container", "proxy", {
        "name": "proxy", "image": "caddy:2.10.2",
        "uploads": [{"file": "/etc/caddy/Caddyfile", "content": "default.localhost {\n\treverse_proxy {\n"}],
    })
    pulumi.CustomResource("kubernetes:networking.k8s.io/v1:Ingress", "default-ingress", {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "agent"},
        "spec": {"ingresClassName": "nginx", "rules": [{"host": "default.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "agent", "port": {"number": 8000}}}}
        ]}}]},
    })
    pulumi.CustomResource("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule", "ssh", {
        "fromPort": 22, "toPort": 22, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0", "securityGroupId": "sg-1",
    })
    return {"model": "docker", "url": {"default": "http://default.example.com:8000"}}
