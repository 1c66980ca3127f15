"""A publisher in its own process, for tests that kill it.

Publishes, writes a ready file once connected, then waits.

Usage: python publisher_child.py REGISTRY PUBLISHER_ID READY_FILE SERVICE=ADDRESS [SERVICE=ADDRESS ...]
"""

from __future__ import annotations

import sys
import time

from plexus.clients.registry import RegistryClient
from plexus.discovery.model import Instance
from plexus.testing.procs import wait_for, write_ready_file


def main() -> None:
    address, publisher_id, ready = sys.argv[1:4]
    instances = [Instance(item.split("=", 1)[0], item.split("=", 1)[1]) for item in sys.argv[4:]]
    client = RegistryClient(address, publisher_id=publisher_id)
    client.start()
    client.set_published(instances)
    wait_for(lambda: client.connected, 10.0, what="publisher connected")
    write_ready_file(ready, {"publisher_id": publisher_id})
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
