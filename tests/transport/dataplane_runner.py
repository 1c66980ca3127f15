"""Run a DataPlane on its own (uvloop) with static services, for subprocess tests and quick load checks.

    python tests/transport/dataplane_runner.py --config '{"services": {"svc": ["127.0.0.1:8080"]},
        "local": {"svc": "127.0.0.1:9000"}}' --ready-file /tmp/ready.json

Listens on 127.0.0.1:0 for the shared egress and the ingress and writes both to the ready file; stops on
SIGTERM/SIGINT. ``settings`` in the config are DataPlaneSettings fields.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import uvloop

from plexus.core.address import parse_host_port
from plexus.discovery.model import Instance
from plexus.testing.procs import write_ready_file
from plexus.transport import DataPlane, DataPlaneSettings


async def main(config: dict[str, object], ready_file: str) -> None:
    settings = DataPlaneSettings(**config.get("settings", {}))  # type: ignore[arg-type]
    plane = DataPlane(settings)
    services: dict[str, list[str]] = config.get("services", {})  # type: ignore[assignment]
    for service, addresses in services.items():
        plane.update_service(service, [Instance(service=service, address=a) for a in addresses])
    local: dict[str, str] = config.get("local", {})  # type: ignore[assignment]
    for service, app in local.items():
        plane.set_local_service(service, "http", parse_host_port(app))
    egress = await plane.listen_shared_egress("127.0.0.1", 0)
    ingress = await plane.listen_ingress("127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready_file, {"egress": str(egress), "ingress": str(ingress)})
    await stop.wait()
    if config.get("print_metrics"):
        print(plane.metrics_text(), flush=True)
    await plane.close(drain_seconds=1.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="JSON text")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    uvloop.run(main(json.loads(args.config), args.ready_file))
