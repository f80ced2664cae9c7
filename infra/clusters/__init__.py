"""Cluster config templates (aws, gcp, runpod) and their generator/validator (see config.py)."""

from infra.clusters.config import (  # noqa: F401
    ONDEMAND_RESOURCE,
    SPOT_RESOURCE,
    check_node_configs,
    generate_config,
    load_config,
    validate_cluster_config,
)
