"""A whole mesh on one machine, as child processes: a control plane (which embeds the registry), sidecars,
provider and consumer apps.

Used by ``plexus demo`` and by the end-to-end tests. Every port is bound as 0 and learned from ready files;
every child is stopped by its PID, in order: consumers (they print their final report), providers
(unpublish, grace), sidecars (withdraw, drain), the control plane. Sidecars follow the control plane
(``--control``, which names the registry too); direct apps use the same address as their registry.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from plexus.demo.processes import Child

SIDECAR_DRAIN: Final = 0.5  # seconds a stopping sidecar keeps serving after withdrawing; its app already did
# A fresh registry has nothing restored to protect, so it needs no warm-up; a short lease grace lets a crashed
# direct provider leave the set soon (callers skip it meanwhile, after one refused connect).
LEASE_GRACE: Final = 1.0
# Policy pushes debounced this long: an apply reaches the sidecars quickly (the product default is 100 ms).
CONTROL_DEBOUNCE_MS: Final = 20.0
HEALTH_INTERVAL: Final = 0.5  # a provider sidecar notices a crashed app within about this long


@dataclass(slots=True)
class ProviderInstance:
    """One provider instance: its app and, when meshed, the sidecar beside it."""

    name: str
    service: str
    mode: str
    app: Child
    sidecar: Child | None


class Cluster:
    def __init__(self, workdir: Path, python: str = sys.executable) -> None:
        self.workdir = workdir
        self.python = python
        self.registry: Child | None = None  # the control plane, serving the registry on the same port
        self.sidecars: list[Child] = []
        self.providers: list[ProviderInstance] = []
        self.consumers: list[Child] = []

    # starting
    def start_control(self, *extra: str) -> Child:
        """``plexus control`` with the registry embedded; ``extra`` flags are appended (e.g. --config-dir)."""
        self.registry = Child("control", [self.python, "-m", "plexus", "control", "--listen", "127.0.0.1:0",
                                          "--admin", "127.0.0.1:0", "--warmup", "0",
                                          "--lease-grace", str(LEASE_GRACE),
                                          "--debounce-ms", str(CONTROL_DEBOUNCE_MS), *extra], self.workdir)
        self.registry.wait_ready()
        return self.registry

    def start_registry(self) -> Child:
        """The registry of the mesh: the control plane, which serves it (kept for the tests that call it)."""
        return self.start_control()

    @property
    def control(self) -> Child | None:
        return self.registry

    @property
    def control_address(self) -> str:
        """What sidecars get as --control and the CLI as --control."""
        assert self.registry is not None, "start_control() first"
        return self.registry.address("listen")

    @property
    def registry_address(self) -> str:
        """What direct apps get as --registry: the control plane's address (it embeds the registry)."""
        return self.control_address

    def start_sidecar(self, name: str, *, wait: bool = True, extra: Sequence[str] = ()) -> Child:
        """A sidecar following the control plane; ``extra`` flags are appended (e.g. --unit u1). Its workload
        is its name without "-sidecar" (metrics, traces and the dashboard name it so) unless ``extra`` sets
        ``--workload`` (the last one given wins)."""
        child = Child(name, [
            self.python, "-m", "plexus", "sidecar", "--control", self.control_address,
            "--workload", name.removesuffix("-sidecar"),
            "--app-address", "127.0.0.1", "--ingress", "127.0.0.1:0", "--api", "127.0.0.1:0",
            "--admin", "127.0.0.1:0", "--egress", "127.0.0.1:0", "--drain-time", str(SIDECAR_DRAIN),
            "--health-interval", str(HEALTH_INTERVAL), *extra,
        ], self.workdir)
        self.sidecars.append(child)
        if wait:
            child.wait_ready()
        return child

    def _app_argv(self, module: str, mode: str, sidecar: Child | None) -> list[str]:
        argv = [self.python, "-m", module, "--mode", mode]
        if mode == "mesh":
            assert sidecar is not None
            argv += ["--sidecar-api", sidecar.address("api")]
        else:
            argv += ["--registry", self.registry_address]
        return argv

    def _own_sidecar(self, name: str, mode: str, sidecar: Child | None) -> Child | None:
        """The sidecar beside a meshed app: the one given (started earlier, overlapping) or a new one."""
        if mode != "mesh":
            return None
        if sidecar is None:
            return self.start_sidecar(f"{name}-sidecar")
        sidecar.wait_ready()
        return sidecar

    def start_provider(self, name: str, service: str, mode: str, *, ledger: Path | None = None,
                       grace: float = 1.0, sidecar: Child | None = None, grpc_service: str | None = None,
                       bolt_service: str | None = None, wait: bool = True) -> ProviderInstance:
        """A provider app, meshed (beside ``sidecar``, or a sidecar started for it) or direct; it serves
        ``service`` over HTTP, and ``grpc_service`` / ``bolt_service`` over gRPC / Bolt when given."""
        sidecar = self._own_sidecar(name, mode, sidecar)
        argv = self._app_argv("plexus.demo.provider", mode, sidecar)
        argv += ["--service", service, "--name", name, "--grace", str(grace)]
        if grpc_service is not None:
            argv += ["--grpc-service", grpc_service]
        if bolt_service is not None:
            argv += ["--bolt-service", bolt_service]
        if ledger is not None:
            argv += ["--ledger", str(ledger)]
        instance = ProviderInstance(name, service, mode, Child(name, argv, self.workdir), sidecar)
        self.providers.append(instance)
        if wait:
            instance.app.wait_ready()
        return instance

    def start_consumer(self, name: str, services: Sequence[str], mode: str, *, rate: float = 20.0,
                       wait_instances: int = 1, report_interval: float = 0.5, ledger: Path | None = None,
                       sidecar: Child | None = None, grpc_services: Sequence[str] = (),
                       bolt_services: Sequence[str] = (), wait: bool = True) -> Child:
        """A consumer app calling ``services`` over HTTP, ``grpc_services`` over gRPC and ``bolt_services``
        over Bolt (mesh mode); it waits for ``wait_instances`` of each before it starts calling."""
        sidecar = self._own_sidecar(name, mode, sidecar)
        argv = self._app_argv("plexus.demo.consumer", mode, sidecar)
        for flag, names in (("--service", services), ("--grpc-service", grpc_services),
                            ("--bolt-service", bolt_services)):
            for service in names:
                argv += [flag, service]
        argv += ["--name", name, "--rate", str(rate), "--wait-instances", str(wait_instances),
                 "--report-interval", str(report_interval)]
        if ledger is not None:
            argv += ["--ledger", str(ledger)]
        child = Child(name, argv, self.workdir, capture_stdout=True)
        self.consumers.append(child)
        if wait:
            child.wait_ready()
        return child

    # stopping
    def stop_provider(self, instance: ProviderInstance, *, sidecar_first: bool = True) -> None:
        """Stop one instance gracefully.

        Meshed, ``sidecar_first``: the sidecar withdraws on SIGTERM and keeps routing to the app while it
        drains, then the app stops. Otherwise the app goes first: the SDK unpublishes (DELETE at the
        sidecar), serves its grace and exits, then the sidecar stops. The sidecar drops a service's route at
        once on DELETE (callers racing the withdrawal get 503 unknown_service), so sidecar-first is the
        order without failures.
        """
        if instance.sidecar is not None and sidecar_first:
            instance.sidecar.stop()
        instance.app.stop()
        if instance.sidecar is not None:
            instance.sidecar.stop()
        if instance in self.providers:
            self.providers.remove(instance)

    def stop_consumers(self) -> None:
        for child in self.consumers:
            child.signal(15)
        for child in self.consumers:
            child.stop()

    def stop_all(self) -> None:
        """Stop every child still running, consumers first; safe to call twice and after a failure."""
        self.stop_consumers()
        for instance in list(self.providers):
            instance.app.signal(15)  # all providers unpublish and serve their grace at the same time
        for instance in list(self.providers):
            instance.app.stop()
        for child in self.sidecars:
            child.signal(15)
        for child in self.sidecars:
            child.stop()
        if self.registry is not None:
            self.registry.stop()

    def children(self) -> list[Child]:
        found = [*self.consumers, *(p.app for p in self.providers), *self.sidecars]
        return found + ([self.registry] if self.registry is not None else [])
