"""The proxy engine (pure): clusters, endpoints, load balancers, routing decisions and counters."""

from plexus.proxy.cluster import Cluster, ClusterManager
from plexus.proxy.endpoint import Endpoint
from plexus.proxy.lb import POLICIES, LoadBalancer, make_balancer
from plexus.proxy.routing import IngressRoutes, service_from_host
from plexus.proxy.stats import DataPlaneStats, ServiceStats, TcpStats

__all__ = [
    "POLICIES",
    "Cluster",
    "ClusterManager",
    "DataPlaneStats",
    "Endpoint",
    "IngressRoutes",
    "LoadBalancer",
    "ServiceStats",
    "TcpStats",
    "make_balancer",
    "service_from_host",
]
