"""Pulumi entry point: `pulumi up -s <stack>` runs this."""

from components.program import run

run()
