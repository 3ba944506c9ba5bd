"""Pulumi components that deploy the OpenHands agent server."""
