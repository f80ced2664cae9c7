"""Where a cluster run's CPU work runs: on the node types marked for it (the head), never on GPU nodes, which carry
CPUs of their own (12-26 on the shipped types) and may be spot. A real two-node Ray (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import time

STOPS_SHARED_RAY = True


def test_cpu_tasks_stay_on_the_head_when_its_cpus_are_busy(no_ray):
    """The review's finding: stitch, audio and ASR tasks asked for 1 CPU with no placement, so once the head's CPUs
    were busy they spilled onto GPU nodes, were preempted there and kept those nodes from going idle."""
    import ray
    from ray.cluster_utils import Cluster

    from infra.clusters.config import CPU_WORK_RESOURCE, CPU_WORK_SLOTS
    from orchestrator.render.ray_runtime import RayRuntime

    def where_it_ran(seconds: float) -> str:  # defined here: Ray ships it by value (tests/ is no package)
        import ray

        time.sleep(seconds)  # long enough that the head's one CPU is busy when the next task is placed
        return ray.get_runtime_context().get_node_id()

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "resources": {CPU_WORK_RESOURCE: CPU_WORK_SLOTS}})
    try:
        gpu_node = cluster.add_node(num_cpus=8, num_gpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        head = ray.get_runtime_context().get_node_id()  # the driver runs on the head node
        task = RayRuntime().task(where_it_ran, cpus=1)
        ran_on = ray.get([task(0.3) for _ in range(6)], timeout=120)
        assert set(ran_on) == {head} and gpu_node.node_id not in ran_on
    finally:
        ray.shutdown()
        cluster.shutdown()
