"""The only asyncio/socket code of the data plane: listeners, downstream protocols, pools, TCP proxying."""

from plexus.transport.dataplane import DataPlane, DataPlaneSettings

__all__ = ["DataPlane", "DataPlaneSettings"]
