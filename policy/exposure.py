"""Policies that guard what is reachable, and how: TLS at every entry, nothing else open to the world.

ALB listeners, Ingresses and Gateway listeners terminate TLS with a certificate (``alb-listener-https``,
``ingress-tls``); on Docker only the TLS proxy publishes ports (``docker-publish-only-tls-proxy``); no
security group opens anything but the web ports to the internet (``no-world-open-ports``, its
``allowedPorts`` config); instances require IMDSv2 so a reachable container cannot read the host's
credentials (``imdsv2-required``); and a NetworkPolicy selects every Kubernetes agent-server pod (the
stack policy ``k8s-network-policy``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyConfigSchema, ReportViolation, ResourceValidationArgs, StackValidationArgs

from components import contract
from policy.resources import (
    DOCKER_CONTAINER,
    DOCKER_ROLE_LABEL,
    INSTANCE,
    K8S_GATEWAY,
    K8S_INGRESS,
    K8S_NETPOL,
    K8S_WORKLOADS,
    LAUNCH_TEMPLATE,
    LISTENERS,
    SECURITY_GROUPS,
    SG_INGRESS_RULE,
    SG_RULE,
    TLS_PROXY_ROLE,
    dig,
    docker_agent,
    docker_role,
    is_map,
    items,
    k8s_agent,
    num,
    policy_config,
    violation,
)

WORLD = contract.WORLD_CIDRS
WEB_PORTS = (80, 443)

# The config of no-world-open-ports (``--policy-pack-config``: {"no-world-open-ports": {"allowedPorts": [...]}}).
ALLOWED_PORTS_SCHEMA = PolicyConfigSchema(
    properties={
        "allowedPorts": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 65535},
            "default": list(WEB_PORTS),
            "description": "Ports that may be open to 0.0.0.0/0 and ::/0",
        }
    }
)


# --------------------------------------------------------------------------- mandatory: TLS


def alb_listener_https(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in LISTENERS:
        return
    props = args.props
    protocol = str(dig(props, "protocol", default="HTTP")).upper()
    port = num(dig(props, "port"))
    if protocol in ("HTTPS", "TLS"):
        if not dig(props, "certificateArn"):
            violation(
                report,
                args,
                f"{protocol} listener on port {port:g} has no certificateArn"
                if port
                else f"{protocol} listener has no certificateArn",
                "attach an ACM certificate (certificate_arn)",
            )
        return
    if protocol in ("TCP", "UDP", "TCP_UDP", "GENEVE"):
        violation(
            report, args, f"{protocol} listener carries traffic without TLS", "use a TLS listener with a certificate"
        )
        return
    actions = items(dig(props, "defaultActions"))
    redirect_only = bool(actions) and all(
        str(dig(a, "type", default="")).lower() == "redirect"
        and str(dig(a, "redirect", "protocol", default="")).upper() == "HTTPS"
        for a in actions
    )
    if port == 80 and redirect_only:
        return
    where = f"port {port:g}" if port is not None else "its port"
    violation(
        report,
        args,
        f"plain HTTP listener on {where}"
        + ("" if port == 80 else " (only port 80 may be HTTP)")
        + ("" if redirect_only else " that does not only redirect to HTTPS"),
        "serve HTTPS with a certificate; keep port 80 only with a single redirect action "
        "(type 'redirect', protocol 'HTTPS', status HTTP_301)",
    )


def _host_covered(host: str, tls_hosts: list[str]) -> bool:
    for h in tls_hosts:
        if h == host or (h.startswith("*.") and host.count(".") == h.count(".") and host.endswith(h[1:])):
            return True
    return False


def gateway_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every listener of a Gateway terminates TLS with a certificate (or passes TLS through)."""
    for i, listener in enumerate(items(dig(args.props, "spec", "listeners"))):
        name = dig(listener, "name", default=f"#{i}")
        protocol = str(dig(listener, "protocol", default="")).upper()
        port = num(dig(listener, "port"))
        where = f"listener '{name}'" + (f" (port {port:g})" if port is not None else "")
        if protocol not in ("HTTPS", "TLS"):
            violation(
                report,
                args,
                f"{where} is {protocol or 'without a protocol'}: plain traffic, no TLS",
                "use protocol HTTPS with tls.certificateRefs (cert-manager fills them from the "
                "cert-manager.io/cluster-issuer annotation); an HTTP listener is not allowed, not even "
                "for redirects",
            )
            continue
        mode = str(dig(listener, "tls", "mode", default="Terminate"))
        if (
            mode == "Terminate"
            and not items(dig(listener, "tls", "certificateRefs"))
            and not dig(listener, "tls", "options")
        ):
            violation(
                report,
                args,
                f"{where} terminates {protocol} without a certificate",
                "set tls.certificateRefs to the TLS secret",
            )


def ingress_tls(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if K8S_GATEWAY.match(args.resource_type):
        gateway_tls(args, report)
        return
    if args.resource_type != K8S_INGRESS:
        return
    tls = [x for x in items(dig(args.props, "spec", "tls")) if is_map(x)]
    if not tls:
        violation(
            report,
            args,
            "Ingress has no spec.tls, so it serves plain HTTP",
            "add spec.tls with the hosts and a secretName (from a cert-manager issuer or an existing TLS secret)",
        )
        return
    tls_hosts = [str(h) for x in tls for h in items(x.get("hosts"))]
    for x in tls:
        if not x.get("secretName"):
            violation(
                report,
                args,
                f"spec.tls entry for {items(x.get('hosts'))} has no secretName",
                "name the TLS secret (cert-manager fills it from the issuer annotation)",
            )
    for rule in items(dig(args.props, "spec", "rules")):
        host = dig(rule, "host")
        if host and not _host_covered(str(host), tls_hosts):
            violation(report, args, f"host {host} is not covered by spec.tls", f"add {host} to spec.tls[].hosts")
        if not host and tls_hosts:
            violation(
                report,
                args,
                "a rule without a host is served on every name, outside spec.tls",
                "give every rule a host listed in spec.tls",
            )


def docker_publish_only_tls_proxy(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != DOCKER_CONTAINER:
        return
    props = args.props
    ports = [p for p in items(dig(props, "ports")) if is_map(p)]
    host_net = str(dig(props, "networkMode", default="")) == "host"
    if not ports and not host_net:
        return
    proxy = docker_role(props) == TLS_PROXY_ROLE and not docker_agent(props)
    what = (
        "uses the host network"
        if host_net
        else "publishes "
        + ", ".join(
            f"{num(p.get('external'), num(p.get('internal'))) or 0:g}->{num(p.get('internal')) or 0:g}" for p in ports
        )
    )
    if not proxy:
        violation(
            report,
            args,
            f"container {what}; only the TLS proxy may be reachable from outside",
            f"remove `ports`/host networking and route through the Caddy TLS proxy (the container "
            f"labelled {DOCKER_ROLE_LABEL}={TLS_PROXY_ROLE})",
        )
    elif host_net:
        violation(report, args, "the TLS proxy uses the host network", "publish only its HTTPS and HTTP ports")
    elif any(num(p.get("internal")) == contract.PORT for p in ports):
        violation(
            report,
            args,
            f"the TLS proxy publishes the agent-server port {contract.PORT}",
            "publish only the proxy's HTTPS and HTTP ports",
        )


# --------------------------------------------------------------------------- mandatory: network exposure


def _world(cidrs: Any) -> list[str]:
    return [str(c) for c in items(cidrs) if str(c) in WORLD]


def _bad_ports(protocol: Any, from_port: Any, to_port: Any, allowed: Sequence[int]) -> str | None:
    proto = str(protocol if protocol is not None else "-1").lower()
    if proto in ("icmp", "1", "icmpv6", "58"):
        return None
    if proto in ("-1", "all"):
        return "all ports"
    lo, hi = num(from_port, 0) or 0, num(to_port, num(from_port, 65535))
    hi = 65535 if hi is None else hi
    if lo <= 0 and hi <= 0:  # 0/0 with tcp means every port
        return "all ports"
    if hi - lo > 1000:
        return f"ports {lo:g}-{hi:g}"
    bad = [p for p in range(int(lo), int(hi) + 1) if p not in allowed]
    if not bad:
        return None
    return f"port {bad[0]}" if lo == hi else f"ports {lo:g}-{hi:g}"


def no_world_open_ports(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    allowed = [int(p) for p in policy_config(args).get("allowedPorts", WEB_PORTS)]
    rules: list[tuple[str, Any, Any, Any, list[str]]] = []  # (where, protocol, from, to, world cidrs)
    if t in SECURITY_GROUPS:
        for i, r in enumerate(items(dig(props, "ingress"))):
            world = _world(dig(r, "cidrBlocks", default=[])) + _world(dig(r, "ipv6CidrBlocks", default=[]))
            rules.append((f"ingress[{i}]", dig(r, "protocol"), dig(r, "fromPort"), dig(r, "toPort"), world))
    elif t == SG_RULE and str(dig(props, "type", default="")) == "ingress":
        world = _world(dig(props, "cidrBlocks", default=[])) + _world(dig(props, "ipv6CidrBlocks", default=[]))
        rules.append(("rule", dig(props, "protocol"), dig(props, "fromPort"), dig(props, "toPort"), world))
    elif t == SG_INGRESS_RULE:
        world = [c for c in (dig(props, "cidrIpv4"), dig(props, "cidrIpv6")) if c in WORLD]
        rules.append(("rule", dig(props, "ipProtocol"), dig(props, "fromPort"), dig(props, "toPort"), world))
    for where, proto, lo, hi, world in rules:
        if not world:
            continue
        bad = _bad_ports(proto, lo, hi, allowed)
        if bad:
            violation(
                report,
                args,
                f"{where} opens {bad} to {', '.join(world)}",
                f"allow only {'/'.join(map(str, allowed))} from the internet; give SSH and admin ports "
                "your admin CIDRs (e.g. 203.0.113.7/32) or use SSM Session Manager",
            )


def imdsv2_required(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in (INSTANCE, LAUNCH_TEMPLATE):
        return
    md = dig(args.props, "metadataOptions", default={})
    if str(dig(md, "httpEndpoint", default="enabled")) == "disabled":
        return
    if str(dig(md, "httpTokens", default="optional")) != "required":
        violation(
            report,
            args,
            "instance metadata allows IMDSv1 (http_tokens is not 'required')",
            "set metadata_options.http_tokens='required' (and http_put_response_hop_limit=2 for containers)",
        )


# --------------------------------------------------------------------------- mandatory: network policy (stack)


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    for k, v in (dig(selector, "matchLabels", default={}) or {}).items():
        if labels.get(str(k)) != str(v):
            return False
    for e in items(dig(selector, "matchExpressions")):
        key, op, vals = str(dig(e, "key")), str(dig(e, "operator")), [str(v) for v in items(dig(e, "values"))]
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in vals)
            or (op == "NotIn" and labels.get(key) in vals)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def k8s_network_policy(args: StackValidationArgs, report: ReportViolation) -> None:
    policies = []
    for r in args.resources:
        if r.resource_type == K8S_NETPOL:
            types = [str(x) for x in items(dig(r.props, "spec", "policyTypes"))]
            if not types or "Ingress" in types:
                policies.append(
                    (dig(r.props, "metadata", "namespace"), dig(r.props, "spec", "podSelector", default={}))
                )
    for r in args.resources:
        found = k8s_agent(r) if r.resource_type in K8S_WORKLOADS else None
        if not found:
            continue
        pod, _ = found
        ns = dig(r.props, "metadata", "namespace")
        labels = {str(k): str(v) for k, v in (dig(pod, "metadata", "labels", default={}) or {}).items()}
        if not any(
            (pns is None or ns is None or pns == ns) and _selector_matches(sel, labels) for pns, sel in policies
        ):
            report(
                f"{r.resource_type.split(':')[-1]} '{r.name}': no NetworkPolicy selects the agent-server pods "
                f"(labels {labels}), so any pod in the cluster can reach port {contract.PORT}. Fix: add a "
                "NetworkPolicy whose podSelector matches them and allows ingress only from the ingress "
                "controller's (or the gateway proxies') namespace",
                r.urn,
            )
