"""Entry point `pulumi preview --policy-pack policy` runs: it only builds the pack.

Constructing a PolicyPack starts the analyzer's gRPC server and blocks, so every policy lives
in ``policies.py`` (imported by tests and ``python -m components check`` without serving).
"""

from policies import PACK_NAME, POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name=PACK_NAME,
    # Each policy sets its own level: the secure defaults are mandatory, image pinning and data
    # protection are advisory until config.prod.json (or --policy-pack-config) makes them mandatory.
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
