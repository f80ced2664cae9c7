"""Cluster configs (aws, gcp, runpod templates), their validator and generator, code shipping, node set-up."""

from infra.clusters.config import (  # noqa: F401
    MARKET_LABEL,
    ONDEMAND_RESOURCE,
    PRICE_LABEL,
    SPOT_RESOURCE,
    check_node_configs,
    load_config,
    s2v_meta,
    validate_cluster_config,
)
