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

The checksum is stamped in plain sight (a Docker label, a pod annotation, an ECS
dockerLabel), so it must not reveal the keys: it is an HMAC-SHA256 of the key env under
a per-tenant random salt (``<tenant>-keys-salt``, a secret in the state). It changes
whenever the keys do, is stable otherwise, and without the salt a short supplied key
cannot be brute-forced from it (a plain sha256 of the env could be).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pulumi
import pulumi_random as random

from components import contract
from components.config import StackConfig, SuppliedKeys

KEY_LENGTH = 48
SALT_LENGTH = 48


def keys_checksum(salt: str, env: dict[str, str]) -> str:
    """The rollout trigger: HMAC-SHA256 of the key env, keyed by the tenant's secret salt."""
    return hmac.new(salt.encode(), json.dumps(env, sort_keys=True).encode(), hashlib.sha256).hexdigest()


class TenantKeys(pulumi.ComponentResource):
    """The keys of one tenant's agent server."""

    api_key: pulumi.Output[str]
    env: pulumi.Output[dict[str, str]]
    checksum: pulumi.Output[str]
    env_names: list[str]
    salt: random.RandomPassword

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
        # One salt per tenant for its lifetime (not per rotation), so the checksum moves only
        # with the keys. RandomPassword keeps its result secret in the state.
        self.salt = random.RandomPassword(f"{tenant}-keys-salt", length=SALT_LENGTH, special=False, opts=child)
        # Not secret: an HMAC under the secret salt, stamped on workloads so a key change rolls them.
        self.checksum = pulumi.Output.unsecret(
            pulumi.Output.all(self.salt.result, self.env).apply(lambda v: keys_checksum(v[0], v[1]))
        )
        self.register_outputs({"apiKey": self.api_key, "checksum": self.checksum})


def tenant_keys(cfg: StackConfig) -> dict[str, TenantKeys]:
    return {
        t: TenantKeys(t, rotation=cfg.keys.rotation, supplied=cfg.tenant_keys.get(t)) for t in cfg.tenants
    }
