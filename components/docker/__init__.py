"""The Docker model: the agent servers and a Caddy TLS proxy on one Docker engine.

- ``local``: the engine the operator runs on (``docker.engine: local``, the default);
- ``vm``: an EC2 VM the stack provisions, with the same containers (``docker.engine: vm``);
- ``caddy``: the TLS proxy's Caddyfile, shared by both; ``cloud_init``: the VM's first boot.
"""
