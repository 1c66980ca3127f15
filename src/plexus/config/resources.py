"""Every policy resource kind in one place: parse a file of them, hold a validated set, scope it to a sidecar.

``parse_resources(text, file_name)`` takes Istio's ``VirtualService`` and ``DestinationRule`` and Plexus's
``RateLimitPolicy``, ``UnitRouting`` and ``TrafficShift`` (see plexus.config.policy_kinds), in any mix, and
reports every problem in one pass as ``file:line: kind name: field path: message`` (raising
``RouteConfigError``). A ``PolicySet`` is what the control plane stores, compiles per sidecar
(``scoped``) and pushes as JSON; the sidecar rebuilds it with ``from_json`` and installs it.

The control plane's cycle: ``split_resources`` gives each document's own YAML (kept for ``plexus get``);
``parse_resources`` validates the file; ``current.merged(applied).check()`` (or ``current.without(ref)``)
finds what spans resources (a route to a subset no DestinationRule defines any more, two VirtualServices for
one host) before anything is accepted; ``scoped(consumes, provides).to_json()`` is one sidecar's snapshot.

A PolicySet keeps each kind's resources sorted by (namespace, name), whatever order they were given in, so
equal sets are equal objects and give equal JSON (the control plane compares JSON to skip unchanged pushes).
Pure: PyYAML is imported by the parse functions only (see plexus.config.route_config).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, cast

from plexus.config.policy_kinds import (
    PLEXUS_KINDS,
    RateLimitPolicy,
    TrafficShift,
    UnitRouting,
    rate_limit_dict,
    rate_limit_from,
    traffic_shift_dict,
    traffic_shift_from,
    unit_routing_dict,
    unit_routing_from,
)
from plexus.config.route_config import (
    KINDS,
    OTHER_ISTIO_KINDS,
    CrossProblem,
    DestinationRule,
    Problem,
    RouteConfigError,
    RoutingConfig,
    VirtualService,
    _dr_dict,
    _dr_from,
    _vs_dict,
    _vs_from,
    compose,
    parse_documents,
    report_across,
    routing_kinds,
    routing_problems,
)

ALL_KINDS: Final = (*KINDS, *PLEXUS_KINDS)  # what `plexus apply` takes, in the order views list them
DEFAULT_NAMESPACE: Final = "default"  # metadata.namespace when a document gives none (Kubernetes')

Resource = VirtualService | DestinationRule | RateLimitPolicy | UnitRouting | TrafficShift

# kind → the PolicySet field holding it
_FIELD: Final[Mapping[str, str]] = {
    "VirtualService": "virtual_services",
    "DestinationRule": "destination_rules",
    "RateLimitPolicy": "rate_limits",
    "UnitRouting": "unit_routings",
    "TrafficShift": "traffic_shifts",
}
_KIND_OF: Final[Mapping[type, str]] = {
    VirtualService: "VirtualService",
    DestinationRule: "DestinationRule",
    RateLimitPolicy: "RateLimitPolicy",
    UnitRouting: "UnitRouting",
    TrafficShift: "TrafficShift",
}
_CODEC: Final[Mapping[str, tuple[Callable[[Any], dict[str, Any]], Callable[[Mapping[str, Any]], Any]]]] = {
    "VirtualService": (_vs_dict, _vs_from),
    "DestinationRule": (_dr_dict, _dr_from),
    "RateLimitPolicy": (rate_limit_dict, rate_limit_from),
    "UnitRouting": (unit_routing_dict, unit_routing_from),
    "TrafficShift": (traffic_shift_dict, traffic_shift_from),
}


# Short names as kubectl knows Istio's (vs, dr); Plexus's by their initials.
SHORT_NAMES: Final[Mapping[str, str]] = {
    "vs": "VirtualService",
    "dr": "DestinationRule",
    "rlp": "RateLimitPolicy",
    "ur": "UnitRouting",
    "ts": "TrafficShift",
}


def kind_named(text: str) -> str:
    """The kind ``text`` names, as ``plexus get`` and ``delete`` take it: the kind in any case, its plural
    or its short name (``virtualservices``, ``vs``); ValueError naming the kinds otherwise."""
    lowered = text.strip().lower()
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    for kind in ALL_KINDS:
        singular = kind.lower()
        plural = singular[:-1] + "ies" if singular.endswith("y") else singular + "s"
        if lowered in (singular, plural):
            return kind
    known = ", ".join(f"{k} ({s})" for s, k in SHORT_NAMES.items())
    raise ValueError(f"unknown kind {text!r}; Plexus takes {known}")


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """One resource's identity: kind, namespace and name (Kubernetes' object key)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def ref_of(resource: Resource) -> ResourceRef:
    return ResourceRef(_KIND_OF[type(resource)], resource.namespace, resource.name)


@dataclass(frozen=True, slots=True)
class RawResource:
    """One document as written: its identity, its own YAML text, and the file:line it starts at."""

    ref: ResourceRef
    text: str
    source: str

    def location(self) -> tuple[str, int]:
        """(file name, first line) of ``source``: ``parse_resources(raw.text, *raw.location(),
        across=False)`` gives the resource with the source and problem lines of the file it came from."""
        file, _, line = self.source.rpartition(":")
        return (file, int(line)) if file and line.isdigit() else (self.source, 1)


@dataclass(frozen=True, slots=True)
class StressShare:
    """A running single-machine stress test (made by ``plexus stress-test``, never applied from a file):
    callers of ``host`` send ``percent`` % of its traffic to the instance published as ``address``."""

    host: str
    address: str
    percent: float


def _key(resource: Resource) -> tuple[str, str]:
    return (resource.namespace, resource.name)


@dataclass(frozen=True, slots=True)
class PolicySet:
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    rate_limits: tuple[RateLimitPolicy, ...] = ()
    unit_routings: tuple[UnitRouting, ...] = ()
    traffic_shifts: tuple[TrafficShift, ...] = ()
    stress: tuple[StressShare, ...] = ()
    file: str | None = None

    def __post_init__(self) -> None:
        # canonical order: equal sets compare equal and serialise to equal JSON
        for name in _FIELD.values():
            items: tuple[Resource, ...] = getattr(self, name)
            object.__setattr__(self, name, tuple(sorted(items, key=_key)))
        object.__setattr__(
            self, "stress", tuple(sorted(self.stress, key=lambda s: (s.host, s.address, s.percent)))
        )

    # -- resources by identity ---------------------------------------------------------------------

    def resources(self) -> list[Resource]:
        """Every applied resource (not stress shares), kind by kind in ALL_KINDS order."""
        out: list[Resource] = []
        for kind in ALL_KINDS:
            out.extend(getattr(self, _FIELD[kind]))
        return out

    def refs(self) -> list[ResourceRef]:
        return [ref_of(r) for r in self.resources()]

    def get(self, ref: ResourceRef) -> Resource | None:
        field = _FIELD.get(ref.kind)
        if field is None:
            return None
        for resource in getattr(self, field):
            if resource.namespace == ref.namespace and resource.name == ref.name:
                found: Resource = resource
                return found
        return None

    def merged(self, other: PolicySet) -> PolicySet:
        """This set with ``other``'s resources added, each replacing the one of the same ref; stress shares
        of ``other`` replace those of the same host. ``file`` stays this set's."""
        changes: dict[str, Any] = {}
        for name in _FIELD.values():
            by_key = {_key(r): r for r in getattr(self, name)}
            by_key.update({_key(r): r for r in getattr(other, name)})
            changes[name] = tuple(by_key.values())
        stress = {s.host: s for s in self.stress}
        stress.update({s.host: s for s in other.stress})
        changes["stress"] = tuple(stress.values())
        return replace(self, **changes)

    def without(self, ref: ResourceRef) -> PolicySet:
        """This set less the resource ``ref`` (the same set if there is none)."""
        field = _FIELD.get(ref.kind)
        if field is None:
            return self
        kept: dict[str, Any] = {
            field: tuple(r for r in getattr(self, field) if _key(r) != (ref.namespace, ref.name))
        }
        return replace(self, **kept)

    def with_stress(self, share: StressShare) -> PolicySet:
        """This set with ``share`` as the one stress test of its host."""
        return replace(self, stress=(*(s for s in self.stress if s.host != share.host), share))

    def without_stress(self, host: str) -> PolicySet:
        return replace(self, stress=tuple(s for s in self.stress if s.host != host))

    # -- checks and views --------------------------------------------------------------------------

    def check(self, changed: Iterable[ResourceRef] = ()) -> list[str]:
        """Problems that span resources, each ``source: Kind name: path: message``; empty when the set
        holds together. The control plane runs it on the set an apply or delete would leave. Of two
        resources that clash (two VirtualServices for one host), the one in ``changed`` (those just
        applied) is reported; among equals, the later in (kind, namespace, name) order."""
        fresh = set(changed)
        ordered = sorted(self.resources(), key=lambda r: ref_of(r) in fresh)  # stable: old ones first
        return [str(p) for p in cross_problems(ordered, self.stress)]

    def unit_routing_for(self, service: str) -> UnitRouting | None:
        """The UnitRouting in force for calls to ``service``: the one naming it, else the one for "*"."""
        fallback = None
        for routing in self.unit_routings:
            if service in routing.hosts:
                return routing
            if "*" in routing.hosts:
                fallback = routing
        return fallback

    def routing(self) -> RoutingConfig:
        return RoutingConfig(self.virtual_services, self.destination_rules, self.file)

    def foreign_destinations(self) -> frozenset[str]:
        """Services routes or mirrors send traffic to other than their VirtualService's own hosts: the
        sidecar must watch them in the registry, since no app declared itself their consumer."""
        return self.routing().foreign_destinations()

    def scoped(self, consumes: Iterable[str], provides: Iterable[str]) -> PolicySet:
        """What one sidecar needs: routing, resilience, unit routing and shifts of the services it calls
        (and of the destinations their routes and mirrors name), rate limits of the services it provides."""
        consumed = set(consumes)
        served = set(provides)
        services = tuple(vs for vs in self.virtual_services if consumed.intersection(vs.hosts))
        hosts = set(consumed)
        for vs in services:
            for rule in vs.http:
                hosts.update(d.host for d in rule.route)
                if rule.mirror is not None:
                    hosts.add(rule.mirror.host)
        return PolicySet(
            virtual_services=services,
            destination_rules=tuple(dr for dr in self.destination_rules if dr.host in hosts),
            rate_limits=tuple(p for p in self.rate_limits if p.host in served),
            unit_routings=tuple(u for u in self.unit_routings if any(u.applies_to(h) for h in hosts)),
            traffic_shifts=tuple(t for t in self.traffic_shifts if t.host in hosts),
            stress=tuple(s for s in self.stress if s.host in hosts),
            file=self.file,
        )

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file}
        for kind, name in _FIELD.items():
            to_dict = _CODEC[kind][0]
            out[name] = [to_dict(r) for r in getattr(self, name)]
        out["stress"] = [{"host": s.host, "address": s.address, "percent": s.percent} for s in self.stress]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySet:
        """From ``to_dict``'s output (trusted: written by ``to_dict`` of a validated set)."""
        parts: dict[str, Any] = {}
        for kind, name in _FIELD.items():
            from_dict = _CODEC[kind][1]
            parts[name] = tuple(from_dict(r) for r in data.get(name, ()))
        stress = tuple(StressShare(s["host"], s["address"], s["percent"]) for s in data.get("stress", ()))
        return cls(**parts, stress=stress, file=data.get("file"))

    def to_json(self) -> str:
        """Deterministic: equal sets give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PolicySet:
        return cls.from_dict(json.loads(text))


# -- what spans resources -----------------------------------------------------------------------------


def cross_problems(resources: Sequence[Resource], stress: Sequence[StressShare] = ()) -> list[CrossProblem]:
    """Routing's checks (plexus.config.route_config.routing_problems) and the Plexus kinds': one
    RateLimitPolicy and one TrafficShift per host, one UnitRouting naming a host (and one for "*"; the
    one naming a host overrides it there). In each pair the earlier resource stands, the later is
    reported."""
    out = routing_problems(
        [r for r in resources if isinstance(r, VirtualService)],
        [r for r in resources if isinstance(r, DestinationRule)],
    )
    for kind, typ in (("RateLimitPolicy", RateLimitPolicy), ("TrafficShift", TrafficShift)):
        first: dict[str, str] = {}
        for resource in resources:
            if not isinstance(resource, typ):
                continue
            host = resource.host
            if host in first:
                message = f"{host!r} already has a {kind} (at {first[host]})"
                out.append(CrossProblem(kind, resource.name, resource.source, "spec.host", message, True))
            else:
                first[host] = resource.source
    routed: dict[str, str] = {}
    for resource in resources:
        if not isinstance(resource, UnitRouting):
            continue
        for host in resource.hosts:
            if host in routed:
                what = "every service" if host == "*" else repr(host)
                message = f"{what} already has a UnitRouting (at {routed[host]})"
                out.append(
                    CrossProblem("UnitRouting", resource.name, resource.source, "spec.hosts", message, True)
                )
            else:
                routed[host] = resource.source
    # A stress share is made by the control plane itself: only its own consistency is checked here.
    for share in stress:
        if not 0 <= share.percent <= 100:
            out.append(
                CrossProblem(
                    "StressShare", share.host, "(stress test)", "percent", f"{share.percent} not in 0..100"
                )
            )
    return out


# -- parsing --------------------------------------------------------------------------------------------

# Kinds parse_resources refuses, and why.
_ELSEWHERE: Final[Mapping[str, str]] = {k: "is not supported by Plexus (yet)" for k in OTHER_ISTIO_KINDS}


def parse_resources(
    text: str, file_name: str = "<policy>", first_line: int = 1, *, across: bool = True
) -> PolicySet:
    """Every resource of a YAML file, validated; raises RouteConfigError listing every problem.
    ``first_line``: the file line ``text`` starts at, to re-read a stored RawResource with its own lines
    (``parse_resources(raw.text, *raw.location(), across=False)``). ``across=False`` skips the checks
    that span resources (a subset defined by another document): for one document read alone, whose set
    is checked as a whole with ``PolicySet.check``."""
    from plexus.config._kind_parsers import plexus_kinds  # its walk needs the YAML nodes only

    walker, documents = compose(text, file_name, first_line)
    parsed = parse_documents(walker, documents, {**routing_kinds(), **plexus_kinds()}, _ELSEWHERE)
    resources = [cast(Resource, obj) for obj, _ in parsed]  # every parser returns one of these kinds
    problems: list[CrossProblem] = []
    first: dict[ResourceRef, str] = {}
    for resource in resources:
        ref = ref_of(resource)
        if ref in first:
            message = f"{ref} is defined twice in this file (first at {first[ref]})"
            problems.append(CrossProblem(ref.kind, ref.name, resource.source, "metadata.name", message))
        else:
            first[ref] = resource.source
    if across:
        problems.extend(cross_problems(resources))
    report_across(walker, problems, parsed)
    if walker.problems:
        raise RouteConfigError(sorted(walker.problems, key=lambda p: p.line))
    parts: dict[str, list[Resource]] = {name: [] for name in _FIELD.values()}
    for resource in resources:
        parts[_FIELD[ref_of(resource).kind]].append(resource)
    fields: dict[str, Any] = {name: tuple(items) for name, items in parts.items()}
    return PolicySet(**fields, file=file_name)


def split_resources(text: str, file_name: str = "<policy>") -> list[RawResource]:
    """Each document's identity, own YAML text and file:line, in file order (run ``parse_resources`` first
    to validate; this raises RouteConfigError only for text that is not YAML or a document without a kind
    or ``metadata.name``). Empty documents are skipped."""
    walker, documents = compose(text, file_name)
    yaml = walker.yaml
    out: list[RawResource] = []
    problems: list[Problem] = []
    for index, doc in enumerate(documents):
        if doc is None or (isinstance(doc, yaml.ScalarNode) and doc.tag == "tag:yaml.org,2002:null"):
            continue
        line = doc.start_mark.line + 1
        fields = {str(k.value): v for k, v in doc.value} if isinstance(doc, yaml.MappingNode) else {}
        meta = fields.get("metadata")
        meta_fields = {str(k.value): v for k, v in meta.value} if isinstance(meta, yaml.MappingNode) else {}
        kind, name = fields.get("kind"), meta_fields.get("name")
        namespace = meta_fields.get("namespace")
        if not isinstance(kind, yaml.ScalarNode) or not isinstance(name, yaml.ScalarNode):
            problems.append(Problem(file_name, line, f"document {index + 1}", "needs kind and metadata.name"))
            continue
        ns = (
            str(namespace.value)
            if isinstance(namespace, yaml.ScalarNode) and namespace.value
            else DEFAULT_NAMESPACE
        )
        ref = ResourceRef(str(kind.value), ns, str(name.value))
        out.append(RawResource(ref, _document_text(text, doc), f"{file_name}:{line}"))
    if problems:
        raise RouteConfigError(problems)
    return out


def _document_text(text: str, doc: Any) -> str:
    """The document's own lines: from the start of the line its node starts on (unless a ``---`` shares
    that line) to where the node ends."""
    start = doc.start_mark.index
    line_start = text.rfind("\n", 0, start) + 1
    if not text[line_start:start].strip():
        start = line_start
    return text[start : doc.end_mark.index].rstrip() + "\n"
