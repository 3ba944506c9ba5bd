"""Kept for stacks deployed before the Modal model moved to ``components.modal.deploy``: Pulumi
stores a dynamic provider pickled by reference, so their state names this module. Nothing else
imports it."""

from components.modal.deploy import ModalAppProvider  # noqa: F401
