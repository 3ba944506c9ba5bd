"""The Modal model: one Modal app per tenant with its Secret and Volume.

- ``app``: the Modal app itself (what ``modal deploy -m components.modal.app`` runs);
- ``deploy``: the Pulumi side, a dynamic provider that deploys it.
"""
