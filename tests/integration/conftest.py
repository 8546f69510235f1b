"""A two-node Ray cluster on this machine, shared by the multi-node and failure tests."""

from __future__ import annotations

import pytest

from tests.integration.local_ray_cluster import LocalRayCluster


@pytest.fixture(scope="session")
def two_node_cluster():
    """Head node with resource `node_a`, worker node with `node_b`; 4 logical CPUs each."""
    cluster = LocalRayCluster()
    try:
        cluster.add_node({"node_a": 10}, num_cpus=4)
        cluster.add_node({"node_b": 10}, num_cpus=4)
        yield cluster
    finally:
        cluster.stop()
