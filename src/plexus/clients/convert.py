"""Instance and ServiceSet to and from the registry's protobuf messages: the only place that knows both."""

from __future__ import annotations

from collections.abc import Iterable

from plexus.discovery.model import DEFAULT_WEIGHT, Instance, ServiceSet, SetState
from plexus.proto import registry_pb2 as pb

_STATE_TO_PB = {SetState.LIVE: pb.ServiceUpdate.LIVE, SetState.RESTORED: pb.ServiceUpdate.RESTORED}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def instance_to_pb(inst: Instance) -> pb.Instance:
    return pb.Instance(
        service=inst.service,
        address=inst.address,
        protocol=inst.protocol,
        version=inst.version,
        labels=dict(inst.labels),
        zone=inst.zone,
        unit=inst.unit,
        # weight is sent as is (0 stays 0) so the registry can refuse an out-of-range weight by its field
        weight=max(inst.weight, 0),
        identity=inst.identity,
        mtls=inst.mtls,
        workload=inst.workload,
        meshed=inst.meshed,
    )


def instance_from_pb(msg: pb.Instance) -> Instance:
    return Instance(
        service=msg.service,
        address=msg.address,
        protocol=msg.protocol,
        version=msg.version,
        labels=dict(msg.labels),
        zone=msg.zone,
        unit=msg.unit,
        weight=msg.weight or DEFAULT_WEIGHT,  # proto3: 0 means the default weight
        identity=msg.identity,
        mtls=msg.mtls,
        workload=msg.workload,
        meshed=msg.meshed,
    )


def service_set_to_pb(sset: ServiceSet) -> pb.ServiceUpdate:
    return pb.ServiceUpdate(
        service=sset.service,
        version=sset.version,
        instances=[instance_to_pb(i) for i in sset.instances],
        state=_STATE_TO_PB[sset.state],
    )


def service_set_from_pb(msg: pb.ServiceUpdate) -> ServiceSet:
    return ServiceSet(
        service=msg.service,
        version=msg.version,
        instances=tuple(instance_from_pb(i) for i in msg.instances),
        state=_STATE_FROM_PB.get(msg.state, SetState.LIVE),
    )


def publish_request(publisher_id: str, instances: Iterable[Instance]) -> pb.PublishRequest:
    return pb.PublishRequest(publisher_id=publisher_id, instances=[instance_to_pb(i) for i in instances])
