"""The operator CLI, ``openhands`` (``uv run openhands <command>``), beside the Pulumi program in
``components/``: it drives the program, it is never imported by it.

- ``main``: the one command line: ``up``, ``preview``, ``down``, ``rotate``, ``status``,
  ``connect``, ``doctor`` on Pulumi's Automation API, and the offline ``check``, ``smoke`` and
  ``render``;
- ``workspace``: the project directory, the Pulumi CLI, the backend and the passphrase;
- ``preflight``: what ``doctor`` (and ``up``, ``preview``, ``rotate`` first) checks;
- ``render``: the program under Pulumi's mocks (offline; ``check`` and the tests use it);
- ``check``: a stack rendered offline, the policy pack and the validators over it;
- ``smoke``: a deployed stack's tenants, checked from its outputs.
"""
