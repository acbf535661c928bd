"""Where replicas come from: a static list in config, or Kubernetes pods by label selector."""

from fleetgate.fleet.discovery.base import Discovery, DiscoveryError, DiscoveryLoop, ReplicaSpec, sync_registry
from fleetgate.fleet.discovery.kubernetes import KubernetesDiscovery
from fleetgate.fleet.discovery.static import StaticDiscovery, endpoint_spec

__all__ = [
    "Discovery",
    "DiscoveryError",
    "DiscoveryLoop",
    "KubernetesDiscovery",
    "ReplicaSpec",
    "StaticDiscovery",
    "endpoint_spec",
    "sync_registry",
]
