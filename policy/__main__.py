"""Entry point `pulumi preview --policy-pack policy` runs (PulumiPolicy.yaml ``main``): it only builds the pack.

Constructing a PolicyPack starts the analyzer's gRPC server and blocks, so the policies live in the
``policy`` package (``policy/__init__.py``), which tests and ``python -m components check`` import
without serving. The project is installed (editable) in its virtualenv, so ``import policy`` works
from ``policy/`` as well, where pulumi runs this file.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from policy import PACK_NAME, POLICIES

PolicyPack(
    name=PACK_NAME,
    # Each policy sets its own level: the secure defaults are mandatory, image pinning and data
    # protection are advisory until config.prod.json (or --policy-pack-config) makes them mandatory.
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
