"""Typed stack configuration: every ``openhands:*`` key parsed into pydantic models before any
resource is registered. Anything wrong ends the program with one ``ConfigError`` naming every
offending key and what it allows (exit code 2 from the operator, no traceback).

- ``errors``: ``ConfigError`` and the config namespace;
- ``values``: shared value types (tenant names, domains, image references, CIDRs, keys) and
  ``ConfigModel``, the strict base of every settings model;
- ``docker``, ``kubernetes``, ``ecs``, ``modal``: one settings module per model;
- ``stack``: ``StackConfig`` (the whole stack) and what counts as prod;
- ``load``: reading Pulumi's config and parsing it (``load``, ``parse``);
- ``stackfile``: the strict reader of a stack file (repeated keys, YAML 1.1 surprises).

``from components.config import X`` works for every public name of these modules.
"""

from __future__ import annotations

from components.config.docker import (  # noqa: F401
    EBS_IOPS,
    EBS_SIZE,
    DockerSettings,
    ProxyLimits,
    VmSettings,
    ebs_iops_problem,
    ebs_size_problem,
    instance_type_problem,
    read_private_key,
)
from components.config.ecs import (  # noqa: F401
    ALB_MAX_TENANTS,
    FARGATE_SIZES,
    EcsSettings,
    fargate_size_problem,
)
from components.config.errors import (  # noqa: F401
    MODELS,
    NAMESPACE,
    ConfigError,
    namespace_typos,
)
from components.config.kubernetes import (  # noqa: F401
    GATEWAY_MAX_LISTENERS,
    MAX_PREFIX,
    Egress,
    GatewaySettings,
    IngressTls,
    KubernetesSettings,
    Toleration,
)
from components.config.load import (  # noqa: F401
    format_errors,
    load,
    nested_model,
    parse,
)
from components.config.modal import (  # noqa: F401
    MODAL_NAME_MAX,
    ModalSettings,
)
from components.config.stack import (  # noqa: F401
    PROD_STACKS,
    SECRET_FIELDS,
    EmergencyOverride,
    PromotionSettings,
    StackConfig,
    is_prod,
    warnings,
)
from components.config.values import (  # noqa: F401
    HOSTED_ZONE_ID,
    MIN_KEY_LENGTH,
    PATTERN_WORDS,
    SUBNET_ID,
    VPC_ID,
    BindAddress,
    Cidr,
    ConfigModel,
    Domain,
    ImageRef,
    Keys,
    KubeconfigSecret,
    ModalToken,
    Resources,
    SuppliedKey,
    SuppliedKeys,
    TenantName,
    image_issues,
    image_parts,
    pattern,
    valid_image_ref,
)
