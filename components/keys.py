"""Per-tenant keys: a session API key and a secret key, generated or supplied, with rotation.

Rotation is a counter (``openhands:keys.rotation``). Each generation ``g`` of a key is
its own ``RandomPassword`` named ``<tenant>-<kind>-key-g<g>``, so raising the counter
adds a new generation without touching the old one:

* session keys: generations ``r`` and ``r-1`` are both accepted
  (``OH_SESSION_API_KEYS_0`` / ``_1``), so clients holding the previous key keep
  working until the next rotation; older generations are deleted.
* secret keys: generation ``r`` encrypts (``OH_SECRET_KEY``) and every older one stays
  in ``OH_PREVIOUS_SECRET_KEYS_<n>`` (newest first), so stored secrets written under any
  earlier key stay readable. Dropping one would silently lose those secrets.

Every model derives its workload from ``TenantKeys.env``, so a rotation changes the
workload's secret (and its checksum) and the workload restarts with the new keys.
"""

from __future__ import annotations

import hashlib
import json

import pulumi
import pulumi_random as random

from components import contract
from components.config import StackConfig, SuppliedKeys

KEY_LENGTH = 48


class TenantKeys(pulumi.ComponentResource):
    """The keys of one tenant's agent server."""

    api_key: pulumi.Output[str]
    env: pulumi.Output[dict[str, str]]
    checksum: pulumi.Output[str]
    env_names: list[str]

    def __init__(
        self,
        tenant: str,
        *,
        rotation: int,
        supplied: SuppliedKeys | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("openhands:keys:TenantKeys", f"{tenant}-keys", None, opts)
        self.tenant = tenant
        child = pulumi.ResourceOptions(parent=self)
        self.passwords: dict[str, random.RandomPassword] = {}

        if supplied is not None:
            session = [supplied.session_api_key.get_secret_value()]
            if supplied.previous_session_api_key is not None:
                session.append(supplied.previous_session_api_key.get_secret_value())
            values = pulumi.Output.secret(
                contract.KeyValues(
                    session_keys=tuple(session),
                    secret_key=supplied.secret_key.get_secret_value(),
                    previous_secret_keys=tuple(k.get_secret_value() for k in supplied.previous_secret_keys),
                )
            )
            n_session, n_previous = len(session), len(supplied.previous_secret_keys)
        else:
            def password(kind: str, generation: int) -> pulumi.Output[str]:
                name = f"{tenant}-{kind}-key-g{generation}"
                # Letters and digits only: the key travels in an HTTP header and env files.
                self.passwords[name] = random.RandomPassword(name, length=KEY_LENGTH, special=False, opts=child)
                return self.passwords[name].result

            session_gens = [g for g in (rotation, rotation - 1) if g >= 0]
            session_outs = [password("session", g) for g in session_gens]
            secret_outs = [password("secret", g) for g in range(rotation, -1, -1)]
            values = pulumi.Output.secret(
                pulumi.Output.all(*session_outs, *secret_outs).apply(
                    lambda v: contract.KeyValues(
                        session_keys=tuple(v[: len(session_gens)]),
                        secret_key=v[len(session_gens)],
                        previous_secret_keys=tuple(v[len(session_gens) + 1 :]),
                    )
                )
            )
            n_session, n_previous = len(session_gens), rotation

        self.env_names = contract.secret_env_names(n_session, n_previous)
        self.values = values
        self.env = pulumi.Output.secret(values.apply(contract.secret_env))
        self.api_key = pulumi.Output.secret(values.apply(lambda v: v.session_keys[0]))
        # Not secret: a one-way digest, stamped on workloads so a key change rolls them.
        self.checksum = pulumi.Output.unsecret(
            self.env.apply(lambda e: hashlib.sha256(json.dumps(e, sort_keys=True).encode()).hexdigest())
        )
        self.register_outputs({"apiKey": self.api_key, "checksum": self.checksum})


def tenant_keys(cfg: StackConfig) -> dict[str, TenantKeys]:
    return {
        t: TenantKeys(t, rotation=cfg.keys.rotation, supplied=cfg.tenant_keys.get(t)) for t in cfg.tenants
    }
