"""The ECS model: one Fargate service per tenant behind one HTTPS load balancer, on one encrypted EFS.

- ``service``: the tenant services, their secrets, the load balancer and the file system;
- ``network``: the VPC (created or reused) and the security groups.
"""
