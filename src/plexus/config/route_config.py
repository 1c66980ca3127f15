"""Routing resources in Istio's shapes: ``VirtualService`` and ``DestinationRule``, parsed into typed objects.

Theory of operation: ``parse_routes(text, file_name)`` composes the YAML into nodes (PyYAML keeps each node's
line), walks every document once and collects every problem it meets, each as ``file:line: kind name: field
path: message``; then it checks what spans documents (``routing_problems``: a subset a route or mirror names
must be defined by a DestinationRule of that host; one VirtualService and one DestinationRule per host).
Nothing stops at the first error. The document walk (``compose``, ``parse_documents`` with a table of
``KindSpec``) is shared with plexus.config.resources, which adds Plexus's own kinds. A field Istio has
that Plexus does not implement yet is refused as "not supported by Plexus" (users see that it is not
applied instead of silently losing it); a field Istio does not have is an "unknown field".

Request policy follows Istio's defaults and meanings: durations in protobuf/Go form ("1s", "100ms", "2m");
``timeout: 0s`` is no timeout; ``retries`` without ``attempts``/``retryOn`` is 2 attempts on
DEFAULT_RETRY_ON; a fault or mirror without a percentage applies to every request; a connection pool
limit of 0 is no limit; ``consecutive5xxErrors: 0`` turns that check off.

Pure: the caller reads the file. PyYAML is imported inside ``parse_routes`` only, so the serving sidecar can
import the typed objects (and ``RoutingConfig.from_json``) without mapping PyYAML (see plexus.sidecar's exec).
Regexes are RE2 (Istio's and Envoy's engine; the ``google-re2`` package), compiled here once: RE2 runs in
time linear in the header's length, so a hostile header value cannot stall the loop as a backtracking
engine can (Python's ``re`` takes seconds on ``(a|a)*x`` against 24 characters, and minutes on ``.*.*.*x``
against a 4 KiB value). Patterns over MAX_REGEX_CHARS are refused, as Envoy caps RE2 program size.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from plexus.config._durations import MAX_DURATION, MIN_DURATION, format_duration, parse_duration
from plexus.core.errors import ConfigError

if TYPE_CHECKING:
    import yaml

API_VERSIONS: Final = frozenset(
    {"networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"}
)
KINDS: Final = ("VirtualService", "DestinationRule")
# Istio kinds a user may paste beside these; Plexus handles them elsewhere or not yet.
OTHER_ISTIO_KINDS: Final = frozenset(
    {
        "Gateway",
        "ServiceEntry",
        "Sidecar",
        "WorkloadEntry",
        "WorkloadGroup",
        "EnvoyFilter",
        "ProxyConfig",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "Telemetry",
        "WasmPlugin",
    }
)
MAX_REGEX_CHARS: Final = 512  # a routing regex longer than this is generated, not written: refuse it
MAX_NAME_CHARS: Final = 253  # DNS name length, as Kubernetes limits metadata.name
# Same shape as plexus.discovery.model.SERVICE_NAME: a host must be a registry service name.
SERVICE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,252}$")
HEADER_NAME: Final = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]{1,256}$")
LB_SIMPLE: Final[Mapping[str, str]] = {
    "ROUND_ROBIN": "round_robin",
    "LEAST_REQUEST": "least_request",
    "LEAST_CONN": "least_request",  # Istio's deprecated alias of LEAST_REQUEST
    "RANDOM": "random",
}
# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on conditions, which Istio's retryOn passes through
# (besides bare HTTP status codes, which Istio turns into retriable-status-codes).
RETRY_ON_HTTP: Final = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
    }
)
RETRY_ON_GRPC: Final = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)
RETRY_ON: Final = RETRY_ON_HTTP | RETRY_ON_GRPC
# Istio's retryOn when `retries` gives none (its default retry policy; "503" is its retriable status code).
DEFAULT_RETRY_ON: Final = ("connect-failure", "refused-stream", "unavailable", "cancelled", "503")
DEFAULT_RETRY_ATTEMPTS: Final = 2  # Istio's default when `retries` gives no `attempts`
MAX_RETRY_ATTEMPTS: Final = 100  # more retries than this multiply load, they do not add availability
MAX_LIMIT: Final = 2**32 - 1  # Istio's int32 "unlimited" default for connection pool limits
# gRPC status names (grpc/status.proto) an abort may answer with; OK is not a fault.
GRPC_STATUS: Final[Mapping[str, int]] = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


class Regex(Protocol):
    """A compiled RE2 pattern (``re2._Regexp``): the one call routing makes."""

    def fullmatch(self, text: str) -> object | None: ...


class RegexUnavailableError(RuntimeError):
    """The RE2 engine (``google-re2``) is not installed."""


def compile_regex(pattern: str) -> Regex:
    """RE2-compile ``pattern``; raises ValueError (RE2's message) for a pattern RE2 refuses."""
    try:
        re2: Any = importlib.import_module(
            "re2"
        )  # on first use: a sidecar without regex routes never maps it
    except ImportError:
        raise RegexUnavailableError(
            "regex matches need the google-re2 package (pip install google-re2)"
        ) from None
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr; the error says it once
    try:
        compiled: Regex = re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        raise ValueError(detail.decode() if isinstance(detail, bytes) else str(detail)) from None
    return compiled


MatchKind = Literal["exact", "prefix", "regex"]
MATCH_KINDS: Final[tuple[MatchKind, ...]] = ("exact", "prefix", "regex")


# -- typed resources ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's StringMatch: ``exact``, ``prefix`` or ``regex`` (a full match, as RE2 in Envoy)."""

    kind: MatchKind
    value: str
    regex: Regex | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "regex" and self.regex is None:
            object.__setattr__(self, "regex", compile_regex(self.value))

    def matches(self, text: str) -> bool:
        if self.kind == "exact":
            return text == self.value
        if self.kind == "prefix":
            return text.startswith(self.value)
        assert self.regex is not None
        return self.regex.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    """One ``match[]`` entry: every condition given must hold. Header names are lower-case."""

    headers: tuple[tuple[str, StringMatch], ...] = ()
    uri: StringMatch | None = None
    method: StringMatch | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RouteDestination:
    host: str
    subset: str | None = None
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class HttpRetry:
    """Istio's ``retries``: up to ``attempts`` retries (not counting the first try), each try bounded by
    ``per_try_timeout`` seconds, on the conditions of ``retry_on`` (Envoy's names: ``5xx``, ``gateway-error``,
    ``connect-failure``, ``refused-stream``, ``reset``, ``retriable-4xx``, ``retriable-status-codes``, gRPC's
    ``cancelled``, ``deadline-exceeded``, ``internal``, ``resource-exhausted``, ``unavailable``, and bare HTTP
    status codes such as ``"503"``). ``attempts`` 0 turns retries off for the route."""

    attempts: int
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpFault:
    """Istio's ``fault``: delay ``delay`` seconds for ``delay_percent`` % of requests, and/or answer
    ``abort_status`` (HTTP) or ``abort_grpc_status`` (a gRPC status name such as ``UNAVAILABLE``) for
    ``abort_percent`` % of them, without calling any upstream."""

    delay: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_grpc_status: str | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Mirror:
    """Istio's ``mirror`` (+ ``mirrorPercentage``): a copy of ``percent`` % of requests goes to ``host`` (and
    ``subset``); its answer is dropped and never delays or fails the original."""

    host: str
    subset: str | None = None
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One ``http[]`` rule: the first rule whose ``match`` holds (any entry; none = always) routes.
    ``timeout`` (seconds) bounds the whole request, retries included; None: no timeout (Istio's default)."""

    name: str | None
    match: tuple[HttpMatch, ...]
    route: tuple[RouteDestination, ...]
    timeout: float | None = None
    retries: HttpRetry | None = None
    fault: HttpFault | None = None
    mirror: Mirror | None = None


@dataclass(frozen=True, slots=True)
class VirtualService:
    name: str
    namespace: str
    hosts: tuple[str, ...]
    http: tuple[HttpRoute, ...]
    source: str = ""  # file:line of the document, for views and messages


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    """``simple`` in Plexus's names (round_robin, least_request, random), or a consistent hash on a header."""

    simple: str | None = None
    hash_header: str | None = None

    @property
    def lb_policy(self) -> str:
        if self.hash_header is not None:
            return "ring_hash"
        return self.simple or "round_robin"


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Istio's ``connectionPool`` (circuit breaking), per sidecar and destination service. None: no limit.
    ``max_connections`` (tcp.maxConnections), ``connect_timeout`` (tcp.connectTimeout, seconds),
    ``max_pending`` (http.http1MaxPendingRequests: requests waiting for a connection), ``max_requests``
    (http.http2MaxRequests: requests in flight), ``max_retries`` (http.maxRetries: retries in flight),
    ``max_requests_per_connection`` (http.maxRequestsPerConnection). Over a limit: an immediate 503
    ``upstream_overflow``."""

    max_connections: int | None = None
    connect_timeout: float | None = None
    max_pending: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None
    max_requests_per_connection: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Istio's ``outlierDetection``: an endpoint with ``consecutive_errors`` 5xx (or connect failures, resets,
    timeouts) in a row, or ``consecutive_gateway_errors`` 502/503/504 in a row, is ejected for
    ``base_ejection_time`` times the number of times it was ejected; sweeps run every ``interval`` seconds;
    never more than ``max_ejection_percent`` % of the endpoints are ejected at once. Istio's defaults."""

    consecutive_errors: int | None = 5
    consecutive_gateway_errors: int | None = None
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries in flight may be at most ``percent`` % of the requests in flight to the service (but at least
    ``min_retry_concurrency``), so a failing upstream sees about 20% extra load, not (attempts + 1) times.
    Envoy's defaults; Istio's ``trafficPolicy.retryBudget``."""

    percent: float = 20.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class DestinationRule:
    name: str
    namespace: str
    host: str
    subsets: tuple[Subset, ...] = ()
    load_balancer: LoadBalancerSettings | None = None
    source: str = ""
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    retry_budget: RetryBudget | None = None


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Every routing resource of one file, validated. ``from_json(to_json())`` gives an equal object."""

    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "virtual_services": [_vs_dict(vs) for vs in self.virtual_services],
            "destination_rules": [_dr_dict(dr) for dr in self.destination_rules],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoutingConfig:
        """From ``to_dict``'s output (trusted: written by ``to_dict`` of a validated config)."""
        return cls(
            tuple(_vs_from(vs) for vs in data["virtual_services"]),
            tuple(_dr_from(dr) for dr in data["destination_rules"]),
            data.get("file"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def foreign_destinations(self) -> frozenset[str]:
        """Services routes send traffic to other than the VirtualService's own hosts: the sidecar must
        watch them in the registry, since no app declared itself their consumer."""
        out: set[str] = set()
        for vs in self.virtual_services:
            for rule in vs.http:
                out.update(d.host for d in rule.route if d.host not in vs.hosts)
                if rule.mirror is not None and rule.mirror.host not in vs.hosts:
                    out.add(rule.mirror.host)
        return frozenset(out)

    @classmethod
    def from_json(cls, text: str) -> RoutingConfig:
        return cls.from_dict(json.loads(text))


def _sm_dict(m: StringMatch | None) -> dict[str, str] | None:
    return None if m is None else {m.kind: m.value}


def _sm_from(d: Mapping[str, str] | None) -> StringMatch | None:
    if d is None:
        return None
    ((kind, value),) = d.items()
    assert kind in MATCH_KINDS
    return StringMatch(kind, value)


def _vs_dict(vs: VirtualService) -> dict[str, Any]:
    return {
        "name": vs.name,
        "namespace": vs.namespace,
        "hosts": list(vs.hosts),
        "source": vs.source,
        "http": [
            {
                "name": rule.name,
                "match": [match_dict(m) for m in rule.match],
                "route": [
                    {"destination": {"host": d.host, "subset": d.subset}, "weight": d.weight}
                    for d in rule.route
                ],
                "timeout": rule.timeout,
                "retries": _retry_dict(rule.retries),
                "fault": _fault_dict(rule.fault),
                "mirror": _mirror_dict(rule.mirror),
            }
            for rule in vs.http
        ],
    }


def match_dict(m: HttpMatch) -> dict[str, Any]:
    return {
        "name": m.name,
        # pairs, not a mapping: PolicySet.to_json sorts mapping keys, and the order is kept as written
        "headers": [[h, _sm_dict(s)] for h, s in m.headers],
        "uri": _sm_dict(m.uri),
        "method": _sm_dict(m.method),
    }


def match_from(m: Mapping[str, Any]) -> HttpMatch:
    return HttpMatch(
        headers=tuple((h, s) for h, raw in _pairs(m["headers"]) if (s := _sm_from(raw)) is not None),
        uri=_sm_from(m["uri"]),
        method=_sm_from(m["method"]),
        name=m["name"],
    )


def _pairs(data: Mapping[str, Any] | Sequence[Sequence[Any]]) -> list[tuple[str, Any]]:
    """[[key, value], ...] (as written since pairs keep order) or an older {key: value}."""
    if isinstance(data, Mapping):
        return list(data.items())
    return [(str(k), v) for k, v in data]


def _retry_dict(r: HttpRetry | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"attempts": r.attempts, "per_try_timeout": r.per_try_timeout, "retry_on": list(r.retry_on)}


def _retry_from(d: Mapping[str, Any] | None) -> HttpRetry | None:
    if d is None:
        return None
    return HttpRetry(d["attempts"], d["per_try_timeout"], tuple(d["retry_on"]))


def _fault_dict(f: HttpFault | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {
        "delay": f.delay,
        "delay_percent": f.delay_percent,
        "abort_status": f.abort_status,
        "abort_grpc_status": f.abort_grpc_status,
        "abort_percent": f.abort_percent,
    }


def _fault_from(d: Mapping[str, Any] | None) -> HttpFault | None:
    if d is None:
        return None
    return HttpFault(
        d["delay"], d["delay_percent"], d["abort_status"], d["abort_grpc_status"], d["abort_percent"]
    )


def _mirror_dict(m: Mirror | None) -> dict[str, Any] | None:
    return None if m is None else {"host": m.host, "subset": m.subset, "percent": m.percent}


def _mirror_from(d: Mapping[str, Any] | None) -> Mirror | None:
    return None if d is None else Mirror(d["host"], d["subset"], d["percent"])


def _vs_from(d: Mapping[str, Any]) -> VirtualService:
    rules = []
    for rule in d["http"]:
        matches = tuple(match_from(m) for m in rule["match"])
        route = tuple(
            RouteDestination(r["destination"]["host"], r["destination"]["subset"], r["weight"])
            for r in rule["route"]
        )
        rules.append(
            HttpRoute(
                rule["name"],
                matches,
                route,
                # .get: a RoutingConfig serialised before these fields existed still loads
                timeout=rule.get("timeout"),
                retries=_retry_from(rule.get("retries")),
                fault=_fault_from(rule.get("fault")),
                mirror=_mirror_from(rule.get("mirror")),
            )
        )
    return VirtualService(d["name"], d["namespace"], tuple(d["hosts"]), tuple(rules), d["source"])


def _dr_dict(dr: DestinationRule) -> dict[str, Any]:
    lb = dr.load_balancer
    return {
        "name": dr.name,
        "namespace": dr.namespace,
        "host": dr.host,
        "source": dr.source,
        "subsets": [{"name": s.name, "labels": [list(kv) for kv in s.labels]} for s in dr.subsets],
        "load_balancer": None if lb is None else {"simple": lb.simple, "hash_header": lb.hash_header},
        "connection_pool": None if dr.connection_pool is None else asdict(dr.connection_pool),
        "outlier_detection": None if dr.outlier_detection is None else asdict(dr.outlier_detection),
        "retry_budget": None if dr.retry_budget is None else asdict(dr.retry_budget),
    }


def _dr_from(d: Mapping[str, Any]) -> DestinationRule:
    lb = d["load_balancer"]
    return DestinationRule(
        d["name"],
        d["namespace"],
        d["host"],
        tuple(Subset(s["name"], tuple((k, v) for k, v in _pairs(s["labels"]))) for s in d["subsets"]),
        None if lb is None else LoadBalancerSettings(lb["simple"], lb["hash_header"]),
        d["source"],
        connection_pool=None if (p := d.get("connection_pool")) is None else ConnectionPool(**p),
        outlier_detection=None if (o := d.get("outlier_detection")) is None else OutlierDetection(**o),
        retry_budget=None if (b := d.get("retry_budget")) is None else RetryBudget(**b),
    )


# -- errors ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    path: str  # "VirtualService reviews: spec.http[0].route[1].weight"
    message: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.path}"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class RouteConfigError(ConfigError):
    """The routing file is invalid; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems[0].where, self.problems[0].message)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# -- the fields each object takes ------------------------------------------------------------------

_DOC: Final = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_METADATA: Final = frozenset(
    {
        "name",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "generateName",
        "finalizers",
        "ownerReferences",
    }
)
_VS_SPEC: Final = frozenset({"hosts", "http"})
_VS_SPEC_ISTIO: Final = frozenset({"gateways", "tls", "tcp", "exportTo"})
_HTTP: Final = frozenset(
    {"name", "match", "route", "timeout", "retries", "fault", "mirror", "mirrorPercentage"}
)
_HTTP_ISTIO: Final = frozenset(
    {
        "redirect",
        "directResponse",
        "delegate",
        "rewrite",
        "mirrors",
        "mirrorPercent",  # deprecated by Istio for mirrorPercentage.value
        "mirror_percent",
        "corsPolicy",
        "headers",
    }
)
_RETRIES: Final = frozenset({"attempts", "perTryTimeout", "retryOn"})
_RETRIES_ISTIO: Final = frozenset({"retryRemoteLocalities", "retryIgnorePreviousHosts", "backoff"})
_FAULT: Final = frozenset({"delay", "abort"})
_DELAY: Final = frozenset({"fixedDelay", "percentage"})
_DELAY_ISTIO: Final = frozenset({"exponentialDelay", "percent"})
_ABORT: Final = frozenset({"httpStatus", "grpcStatus", "percentage"})
_ABORT_ISTIO: Final = frozenset({"http2Error"})
_PERCENT: Final = frozenset({"value"})
_MIRROR: Final = frozenset({"host", "subset"})
_MIRROR_ISTIO: Final = frozenset({"port"})
_MATCH: Final = frozenset({"name", "headers", "uri", "method"})
_MATCH_ISTIO: Final = frozenset(
    {
        "scheme",
        "authority",
        "port",
        "sourceLabels",
        "gateways",
        "queryParams",
        "ignoreUriCase",
        "withoutHeaders",
        "sourceNamespace",
        "statPrefix",
    }
)
_ROUTE: Final = frozenset({"destination", "weight"})
_ROUTE_ISTIO: Final = frozenset({"headers"})
_DEST: Final = frozenset({"host", "subset"})
_DEST_ISTIO: Final = frozenset({"port"})
_STRING_MATCH: Final = frozenset(MATCH_KINDS)
_DR_SPEC: Final = frozenset({"host", "subsets", "trafficPolicy"})
_DR_SPEC_ISTIO: Final = frozenset({"exportTo", "workloadSelector"})
_SUBSET: Final = frozenset({"name", "labels"})
_SUBSET_ISTIO: Final = frozenset({"trafficPolicy"})
_POLICY: Final = frozenset({"loadBalancer", "connectionPool", "outlierDetection", "retryBudget"})
_POLICY_ISTIO: Final = frozenset({"tls", "portLevelSettings", "tunnel", "proxyProtocol"})
_POOL: Final = frozenset({"tcp", "http"})
_POOL_TCP: Final = frozenset({"maxConnections", "connectTimeout"})
_POOL_TCP_ISTIO: Final = frozenset({"tcpKeepalive", "maxConnectionDuration", "idleTimeout"})
_POOL_HTTP: Final = frozenset(
    {"http1MaxPendingRequests", "http2MaxRequests", "maxRetries", "maxRequestsPerConnection"}
)
_POOL_HTTP_ISTIO: Final = frozenset(
    {"idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"}
)
_OUTLIER: Final = frozenset(
    {
        "consecutive5xxErrors",
        "consecutiveErrors",
        "consecutiveGatewayErrors",
        "interval",
        "baseEjectionTime",
        "maxEjectionPercent",
    }
)
_OUTLIER_ISTIO: Final = frozenset(
    {"minHealthPercent", "splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures"}
)
_BUDGET: Final = frozenset({"percent", "minRetryConcurrency"})
_LB: Final = frozenset({"simple", "consistentHash"})
_LB_ISTIO: Final = frozenset({"localityLbSetting", "warmupDurationSecs", "warmup"})
_HASH: Final = frozenset({"httpHeaderName"})
_HASH_ISTIO: Final = frozenset(
    {"httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash", "maglev", "minimumRingSize"}
)


# -- the walk ----------------------------------------------------------------------------------------


class _Walker:
    """Walks composed YAML nodes, turning them into typed values and collecting problems with their lines."""

    def __init__(self, yaml_module: Any, file: str) -> None:
        self.yaml = yaml_module
        self.file = file
        self.problems: list[Problem] = []
        self.prefix = ""  # "VirtualService reviews: " while inside a document
        self.first_line = 1  # the file line of the text's first line (a document re-read from a store)

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        where = self.prefix + path if path else self.prefix.rstrip(": ")
        self.problems.append(Problem(self.file, node.start_mark.line + self.first_line, where, message))

    def line(self, node: yaml.Node) -> str:
        return f"{self.file}:{node.start_mark.line + self.first_line}"

    def mapping(
        self,
        node: yaml.Node,
        path: str,
        supported: frozenset[str],
        istio_only: frozenset[str] = frozenset(),
    ) -> dict[str, yaml.Node] | None:
        """The supported keys' value nodes; each unknown, unsupported or repeated key is a problem."""
        if not isinstance(node, self.yaml.MappingNode):
            self.error(node, path, "must be a mapping")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            if key in found:
                self.error(key_node, where, "repeated field")
            elif key in supported:
                found[key] = value_node
            elif key in istio_only:
                self.error(key_node, where, "not supported by Plexus (yet)")
            else:
                self.error(key_node, where, f"unknown field; known here: {', '.join(sorted(supported))}")
        return found

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node] | None:
        if not isinstance(node, self.yaml.SequenceNode):
            self.error(node, path, "must be a list")
            return None
        return list(node.value)

    def string(self, node: yaml.Node, path: str) -> str | None:
        """A scalar's source text (``1`` stays "1"); null, lists and mappings are problems."""
        if not isinstance(node, self.yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.error(node, path, "must be a string")
            return None
        return str(node.value)

    def integer(self, node: yaml.Node, path: str) -> int | None:
        if not isinstance(node, self.yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            self.error(node, path, "must be an integer")
            return None
        value = self.yaml.safe_load(node.value)  # YAML's own int forms: 0x1F, 1_000, +7
        return value if isinstance(value, int) else None

    def count(self, node: yaml.Node, path: str, low: int, high: int) -> int | None:
        """An integer in ``low..high`` (each end included)."""
        value = self.integer(node, path)
        if value is not None and not low <= value <= high:
            self.error(node, path, f"{value} is not in {low}..{high}")
            return None
        return value

    def number(self, node: yaml.Node, path: str) -> float | None:
        """An int or float scalar (``1``, ``0.5``, ``1e3``); not NaN or infinity."""
        ints_and_floats = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
        if not isinstance(node, self.yaml.ScalarNode) or node.tag not in ints_and_floats:
            self.error(node, path, "must be a number")
            return None
        value = self.yaml.safe_load(node.value)
        if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
            self.error(node, path, "must be a finite number")
            return None
        return float(value)

    def fraction(
        self, node: yaml.Node, path: str, low: float, high: float, *, open_low: bool
    ) -> float | None:
        """A number in ``low..high`` (``low`` itself excluded when ``open_low``)."""
        value = self.number(node, path)
        if value is None:
            return None
        if low < value <= high or (not open_low and value == low):
            return value
        if open_low:
            self.error(node, path, f"{value:g} must be above {low:g} and at most {high:g}")
        else:
            self.error(node, path, f"{value:g} is not in {low:g}..{high:g}")
        return None

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        if not isinstance(node, self.yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            self.error(node, path, "must be true or false")
            return None
        return bool(self.yaml.safe_load(node.value))

    def duration(
        self, node: yaml.Node, path: str, *, zero: bool = False, high: float = MAX_DURATION
    ) -> float | None:
        """Seconds of a protobuf/Go duration ("1s", "0.5s", "100ms", "2m", "1h"); 0 only where ``zero``."""
        if isinstance(node, self.yaml.ScalarNode) and node.tag in (
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
        ):
            self.error(
                node, path, f"{node.value!r} has no unit: write e.g. '{node.value}s' (units h, m, s, ms)"
            )
            return None
        text = self.string(node, path)
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None
        if seconds == 0 and zero:
            return 0.0
        if seconds < MIN_DURATION:
            self.error(node, path, f"{text!r} is {'zero' if seconds == 0 else 'too short'}: at least 1ms")
            return None
        if seconds > high:
            self.error(node, path, f"{text!r} is longer than {format_duration(high)}")
            return None
        return seconds

    def percent(self, node: yaml.Node, path: str) -> float | None:
        """Istio's Percent message, ``{value: 0..100}``, as a float."""
        fields = self.mapping(node, path, _PERCENT)
        if fields is None:
            return None
        if "value" not in fields:
            self.error(node, f"{path}.value", "missing: give a percent 0..100")
            return None
        return self.fraction(fields["value"], f"{path}.value", 0.0, 100.0, open_low=False)

    def service(self, node: yaml.Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is not None and not SERVICE_NAME.match(text):
            self.error(node, path, f"{text!r} is not a service name (letters, digits, . _ : -)")
            return None
        return text

    def name(self, node: yaml.Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is not None and not 0 < len(text) <= MAX_NAME_CHARS:
            self.error(node, path, f"must be 1..{MAX_NAME_CHARS} characters")
            return None
        return text

    def resource_name(self, node: yaml.Node, path: str) -> str | None:
        """metadata.name / namespace: a service-like name (Kubernetes' DNS names and RPC interface names
        such as ``com.example.Echo:1.0`` both fit), never spaces or ``/`` (views show namespace/name)."""
        text = self.string(node, path)
        if text is not None and not SERVICE_NAME.match(text):
            self.error(node, path, f"{text!r} is not a resource name (letters, digits, . _ : -; at most 253)")
            return None
        return text

    def labels(self, node: yaml.Node, path: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, self.yaml.MappingNode):
            self.error(node, path, "must be a mapping of label: value")
            return ()
        seen: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            value = self.string(value_node, f"{path}.{key}")
            if key in seen:
                self.error(key_node, f"{path}.{key}", "repeated label")
            elif value is not None:
                seen[key] = value
        return tuple(seen.items())

    def string_match(self, node: yaml.Node, path: str) -> StringMatch | None:
        fields = self.mapping(node, path, _STRING_MATCH)
        if fields is None:
            return None
        if len(fields) != 1:
            if not self.problems or self.problems[-1].path != self.prefix + path:
                self.error(node, path, "give exactly one of exact, prefix, regex")
            return None
        ((kind, value_node),) = fields.items()
        value = self.string(value_node, f"{path}.{kind}")
        if value is None:
            return None
        if kind == "regex":
            compiled = self.regex(value_node, f"{path}.regex", value)
            return None if compiled is None else StringMatch("regex", value, compiled)
        return StringMatch("exact" if kind == "exact" else "prefix", value)

    def regex(self, node: yaml.Node, path: str, pattern: str) -> Regex | None:
        if len(pattern) > MAX_REGEX_CHARS:
            self.error(node, path, f"regex of {len(pattern)} characters; at most {MAX_REGEX_CHARS}")
            return None
        try:
            return compile_regex(pattern)
        except ValueError as exc:
            self.error(node, path, f"not a valid RE2 regex: {exc}")
        except RegexUnavailableError as exc:
            self.error(node, path, str(exc))
        return None


def parse_routes(text: str, file_name: str = "<routes>") -> RoutingConfig:
    """Every VirtualService and DestinationRule of ``text``; raises RouteConfigError listing every problem."""
    walker, documents = compose(text, file_name)
    parsed = parse_documents(walker, documents, routing_kinds(), ROUTING_ELSEWHERE)
    services = [s for s, _ in parsed if isinstance(s, VirtualService)]
    rules = [r for r, _ in parsed if isinstance(r, DestinationRule)]
    report_across(walker, routing_problems(services, rules), parsed)
    if walker.problems:
        raise RouteConfigError(sorted(walker.problems, key=lambda p: p.line))
    return RoutingConfig(tuple(services), tuple(rules), file_name)


# -- documents of any kind (parse_routes here; plexus.config.resources.parse_resources for every kind) ---

SpecParser = Callable[["_Walker", "yaml.Node", str, str, str], object | None]  # (w, spec, name, ns, source)


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How one kind is read: the apiVersions it takes and its spec parser."""

    api_versions: frozenset[str]
    parse: SpecParser
    family: str  # "an Istio kind" / "a Plexus kind", for an apiVersion of the other family


def routing_kinds() -> dict[str, KindSpec]:
    return {
        "VirtualService": KindSpec(API_VERSIONS, _virtual_service, "an Istio kind"),
        "DestinationRule": KindSpec(API_VERSIONS, _destination_rule, "an Istio kind"),
    }


# Kinds parse_routes refuses, and why (a Plexus kind goes through plexus.config.resources).
ROUTING_ELSEWHERE: Final[Mapping[str, str]] = {
    **{k: "is not supported by Plexus (yet)" for k in OTHER_ISTIO_KINDS},
    **{
        k: "is a Plexus policy kind: give it to `plexus apply` or `plexus validate`"
        for k in ("RateLimitPolicy", "UnitRouting", "TrafficShift")
    },
}


def compose(text: str, file_name: str, first_line: int = 1) -> tuple[_Walker, list[yaml.Node]]:
    """The YAML documents of ``text`` as nodes (with lines counted from ``first_line``), and a walker for
    them; raises RouteConfigError for text that is not YAML."""
    import yaml  # here, not at the top: see the module's docstring

    walker = _Walker(yaml, file_name)
    walker.first_line = first_line
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + first_line if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise RouteConfigError([Problem(file_name, line, "(file)", f"not valid YAML: {problem}")]) from None
    return walker, documents


def _is_empty(w: _Walker, doc: yaml.Node | None) -> bool:
    return doc is None or (isinstance(doc, w.yaml.ScalarNode) and doc.tag == "tag:yaml.org,2002:null")


def parse_documents(
    w: _Walker,
    documents: Sequence[yaml.Node | None],
    kinds: Mapping[str, KindSpec],
    elsewhere: Mapping[str, str],
) -> list[tuple[object, yaml.Node]]:
    """Each document's typed object (those that parsed), with its node; problems collect in ``w``."""
    out: list[tuple[object, yaml.Node]] = []
    for index, doc in enumerate(documents):
        if doc is None or _is_empty(w, doc):
            continue
        w.prefix = f"document {index + 1}: "
        parsed = _document(w, doc, kinds, elsewhere)
        if parsed is not None:
            out.append((parsed, doc))
    return out


def _document(
    w: _Walker, doc: yaml.Node, kinds: Mapping[str, KindSpec], elsewhere: Mapping[str, str]
) -> object | None:
    top = w.mapping(doc, "", _DOC)
    if top is None:
        return None
    takes = ", ".join(kinds)
    kind_node = top.get("kind")
    kind = w.string(kind_node, "kind") if kind_node is not None else None
    if kind_node is None:
        w.error(doc, "kind", f"missing; one of {takes}")
    spec = kinds.get(kind) if kind is not None else None
    versions = (
        spec.api_versions
        if spec is not None
        else frozenset().union(*(k.api_versions for k in kinds.values()))
    )
    api_node = top.get("apiVersion")
    if api_node is None:
        w.error(doc, "apiVersion", f"missing; one of {', '.join(sorted(versions))}")
    else:
        api = w.string(api_node, "apiVersion")
        if api is not None and api not in versions:
            message = f"{api!r} is not one of {', '.join(sorted(versions))}"
            if spec is not None and any(api in k.api_versions for k in kinds.values()):
                message += f": {kind} is {spec.family}"
            w.error(api_node, "apiVersion", message)
    name, namespace = "", "default"
    meta_node = top.get("metadata")
    if meta_node is None:
        w.error(doc, "metadata.name", "missing")
    else:
        meta = w.mapping(meta_node, "metadata", _METADATA)
        if meta is not None:
            if "name" not in meta:
                w.error(meta_node, "metadata.name", "missing")
            else:
                name = w.resource_name(meta["name"], "metadata.name") or ""
            if "namespace" in meta:
                namespace = w.resource_name(meta["namespace"], "metadata.namespace") or namespace
    if kind is not None and kind_node is not None and spec is None:
        if kind in elsewhere:
            w.error(kind_node, "kind", f"{kind} {elsewhere[kind]}; this file takes {takes}")
        else:
            w.error(kind_node, "kind", f"unknown kind {kind!r}; this file takes {takes}")
        return None
    w.prefix = f"{kind} {name or '?'}: "
    spec_node = top.get("spec")
    if spec_node is None:
        w.error(doc, "spec", "missing")
        return None
    if spec is None:
        return None
    return spec.parse(w, spec_node, name, namespace, w.line(doc))


def _virtual_service(
    w: _Walker, node: yaml.Node, name: str, namespace: str, source: str
) -> VirtualService | None:
    spec = w.mapping(node, "spec", _VS_SPEC, _VS_SPEC_ISTIO)
    if spec is None:
        return None
    hosts: list[str] = []
    if "hosts" not in spec:
        w.error(node, "spec.hosts", "missing: name the services this VirtualService routes")
    else:
        for i, host_node in enumerate(w.sequence(spec["hosts"], "spec.hosts") or []):
            host = w.service(host_node, f"spec.hosts[{i}]")
            if host is not None:
                hosts.append(host)
        if not hosts and isinstance(spec["hosts"], w.yaml.SequenceNode) and not spec["hosts"].value:
            w.error(spec["hosts"], "spec.hosts", "empty: name at least one service")
    rules: list[HttpRoute] = []
    if "http" not in spec:
        w.error(node, "spec.http", "missing: give at least one route rule")
    else:
        http_nodes = w.sequence(spec["http"], "spec.http")
        if http_nodes is not None and not http_nodes:
            w.error(spec["http"], "spec.http", "empty: give at least one route rule")
        for i, rule_node in enumerate(http_nodes or []):
            rule = _http_route(w, rule_node, f"spec.http[{i}]")
            if rule is not None:
                rules.append(rule)
    return VirtualService(name, namespace, tuple(hosts), tuple(rules), source)


def _http_route(w: _Walker, node: yaml.Node, path: str) -> HttpRoute | None:
    fields = w.mapping(node, path, _HTTP, _HTTP_ISTIO)
    if fields is None:
        return None
    name = w.name(fields["name"], f"{path}.name") if "name" in fields else None
    matches: list[HttpMatch] = []
    if "match" in fields:
        for i, match_node in enumerate(w.sequence(fields["match"], f"{path}.match") or []):
            match = _http_match(w, match_node, f"{path}.match[{i}]")
            if match is not None:
                matches.append(match)
    # the request policy first: its problems are reported even when the route itself is missing
    timeout = w.duration(fields["timeout"], f"{path}.timeout", zero=True) if "timeout" in fields else None
    retries = _retries(w, fields["retries"], f"{path}.retries") if "retries" in fields else None
    fault = _fault(w, fields["fault"], f"{path}.fault") if "fault" in fields else None
    mirror = _mirror(w, fields, path)
    destinations: list[RouteDestination] = []
    weight_nodes: list[yaml.Node] = []
    if "route" not in fields:
        w.error(node, f"{path}.route", "missing: give at least one destination")
        return None
    route_nodes = w.sequence(fields["route"], f"{path}.route")
    if route_nodes is None:
        return None
    if not route_nodes:
        w.error(fields["route"], f"{path}.route", "empty: give at least one destination")
        return None
    for i, route_node in enumerate(route_nodes):
        where = f"{path}.route[{i}]"
        route = w.mapping(route_node, where, _ROUTE, _ROUTE_ISTIO)
        if route is None:
            continue
        weight: int | None = None
        if "weight" in route:
            weight = w.integer(route["weight"], f"{where}.weight")
            if weight is not None and not 0 <= weight <= 100:
                w.error(route["weight"], f"{where}.weight", f"{weight} is not in 0..100")
                weight = None
            weight_nodes.append(route["weight"])
        if "destination" not in route:
            w.error(route_node, f"{where}.destination", "missing")
            continue
        dest = w.mapping(route["destination"], f"{where}.destination", _DEST, _DEST_ISTIO)
        if dest is None:
            continue
        if "host" not in dest:
            w.error(route["destination"], f"{where}.destination.host", "missing")
            continue
        host = w.service(dest["host"], f"{where}.destination.host")
        subset = w.name(dest["subset"], f"{where}.destination.subset") if "subset" in dest else None
        if host is not None:
            destinations.append(RouteDestination(host, subset, weight))
    given = [d.weight for d in destinations if d.weight is not None]
    if weight_nodes and len(destinations) == len(route_nodes):
        if len(weight_nodes) != len(route_nodes) and len(route_nodes) > 1:
            w.error(fields["route"], f"{path}.route", "give a weight to every destination, or to none")
        elif len(given) == len(route_nodes) and sum(given) != 100:
            w.error(fields["route"], f"{path}.route", f"weights sum to {sum(given)}, not 100")
    return HttpRoute(
        name,
        tuple(matches),
        tuple(destinations),
        timeout=timeout or None,  # Istio: "0s" turns the route's timeout off
        retries=retries,
        fault=fault,
        mirror=mirror,
    )


def _retries(w: _Walker, node: yaml.Node, path: str) -> HttpRetry | None:
    fields = w.mapping(node, path, _RETRIES, _RETRIES_ISTIO)
    if fields is None:
        return None
    attempts: int | None = DEFAULT_RETRY_ATTEMPTS
    if "attempts" in fields:
        attempts = w.count(fields["attempts"], f"{path}.attempts", 0, MAX_RETRY_ATTEMPTS)
    per_try = None
    if "perTryTimeout" in fields:
        per_try = w.duration(fields["perTryTimeout"], f"{path}.perTryTimeout")
    retry_on: tuple[str, ...] | None = DEFAULT_RETRY_ON
    if "retryOn" in fields:
        retry_on = _retry_on(w, fields["retryOn"], f"{path}.retryOn")
    if attempts is None or retry_on is None:
        return None
    return HttpRetry(attempts, per_try, retry_on)


def _retry_on(w: _Walker, node: yaml.Node, path: str) -> tuple[str, ...] | None:
    """Istio's comma list of Envoy conditions and bare HTTP statuses; each name is checked."""
    text = w.string(node, path)
    if text is None:
        return None
    names: list[str] = []
    bad = False
    if any(not raw.strip() for raw in text.split(",")):
        w.error(node, path, f"{text!r} has an empty condition")
        bad = True
    for raw in text.split(","):
        cond = raw.strip()
        if not cond:
            continue
        elif cond.isdigit() and len(cond) == 3:
            if not 100 <= int(cond) <= 599:
                w.error(node, path, f"{cond!r} is not an HTTP status (100..599)")
                bad = True
            elif cond not in names:
                names.append(cond)
        elif cond not in RETRY_ON:
            w.error(
                node,
                path,
                f"unknown retry condition {cond!r}; known: {', '.join(sorted(RETRY_ON))} "
                "and HTTP statuses such as 503",
            )
            bad = True
        elif cond not in names:
            names.append(cond)
    return None if bad else tuple(names)


def _fault(w: _Walker, node: yaml.Node, path: str) -> HttpFault | None:
    fields = w.mapping(node, path, _FAULT)
    if fields is None:
        return None
    if not fields:
        w.error(node, path, "give delay, abort or both")
        return None
    ok = True
    delay: float | None = None
    delay_percent = 100.0
    if "delay" in fields:
        where = f"{path}.delay"
        delay_fields = w.mapping(fields["delay"], where, _DELAY, _DELAY_ISTIO)
        ok = delay_fields is not None
        if delay_fields is not None:
            if "fixedDelay" not in delay_fields:
                if "exponentialDelay" not in delay_fields:  # that one was reported as not supported
                    w.error(fields["delay"], f"{where}.fixedDelay", "missing: give the delay, e.g. '2s'")
                ok = False
            else:
                delay = w.duration(delay_fields["fixedDelay"], f"{where}.fixedDelay")
                ok = delay is not None
            if "percentage" in delay_fields:
                got = w.percent(delay_fields["percentage"], f"{where}.percentage")
                ok = ok and got is not None
                delay_percent = 100.0 if got is None else got
    abort_status: int | None = None
    abort_grpc: str | None = None
    abort_percent = 100.0
    if "abort" in fields:
        where = f"{path}.abort"
        abort = w.mapping(fields["abort"], where, _ABORT, _ABORT_ISTIO)
        if abort is None:
            ok = False
        else:
            if "httpStatus" in abort and "grpcStatus" in abort:
                w.error(fields["abort"], where, "give httpStatus or grpcStatus, not both")
                ok = False
            elif "httpStatus" in abort:
                abort_status = w.count(abort["httpStatus"], f"{where}.httpStatus", 200, 599)
                ok = ok and abort_status is not None
            elif "grpcStatus" in abort:
                abort_grpc = _grpc_status(w, abort["grpcStatus"], f"{where}.grpcStatus")
                ok = ok and abort_grpc is not None
            elif "http2Error" not in abort:
                w.error(fields["abort"], where, "give httpStatus or grpcStatus")
                ok = False
            else:
                ok = False
            if "percentage" in abort:
                got = w.percent(abort["percentage"], f"{where}.percentage")
                ok = ok and got is not None
                abort_percent = 100.0 if got is None else got
    if not ok:
        return None
    return HttpFault(delay, delay_percent, abort_status, abort_grpc, abort_percent)


def _grpc_status(w: _Walker, node: yaml.Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    if text.upper() not in GRPC_STATUS:
        w.error(node, path, f"{text!r} is not a gRPC status name other than OK (e.g. UNAVAILABLE)")
        return None
    return text.upper()


def _mirror(w: _Walker, fields: Mapping[str, yaml.Node], path: str) -> Mirror | None:
    """``mirror`` + ``mirrorPercentage`` of one http rule."""
    percent: float | None = 100.0  # Istio mirrors every request unless mirrorPercentage says otherwise
    if "mirrorPercentage" in fields:
        percent = w.percent(fields["mirrorPercentage"], f"{path}.mirrorPercentage")
        if "mirror" not in fields:
            w.error(fields["mirrorPercentage"], f"{path}.mirrorPercentage", "without mirror: give mirror too")
            return None
    if "mirror" not in fields:
        return None
    where = f"{path}.mirror"
    dest = w.mapping(fields["mirror"], where, _MIRROR, _MIRROR_ISTIO)
    if dest is None:
        return None
    if "host" not in dest:
        w.error(fields["mirror"], f"{where}.host", "missing: name the service that receives the copies")
        return None
    host = w.service(dest["host"], f"{where}.host")
    subset = w.name(dest["subset"], f"{where}.subset") if "subset" in dest else None
    if host is None or percent is None or ("subset" in dest and subset is None):
        return None
    return Mirror(host, subset, percent)


def _http_match(w: _Walker, node: yaml.Node, path: str) -> HttpMatch | None:
    fields = w.mapping(node, path, _MATCH, _MATCH_ISTIO)
    if fields is None:
        return None
    headers: list[tuple[str, StringMatch]] = []
    if "headers" in fields:
        header_map = fields["headers"]
        if not isinstance(header_map, w.yaml.MappingNode):
            w.error(header_map, f"{path}.headers", "must be a mapping of header name: {exact|prefix|regex}")
        else:
            seen: set[str] = set()
            for key_node, value_node in header_map.value:
                raw = str(key_node.value)
                header = raw.lower()  # header names are case-insensitive; lookups are lower-case
                where = f"{path}.headers.{raw}"
                if not HEADER_NAME.match(header):
                    w.error(key_node, where, f"{raw!r} is not a header name")
                    continue
                if header in seen:
                    w.error(key_node, where, "repeated header")
                    continue
                seen.add(header)
                matcher = w.string_match(value_node, where)
                if matcher is not None:
                    headers.append((header, matcher))
    uri = w.string_match(fields["uri"], f"{path}.uri") if "uri" in fields else None
    method = w.string_match(fields["method"], f"{path}.method") if "method" in fields else None
    name = w.name(fields["name"], f"{path}.name") if "name" in fields else None
    return HttpMatch(tuple(headers), uri, method, name)


def _destination_rule(
    w: _Walker, node: yaml.Node, name: str, namespace: str, source: str
) -> DestinationRule | None:
    spec = w.mapping(node, "spec", _DR_SPEC, _DR_SPEC_ISTIO)
    if spec is None:
        return None
    host: str | None = None
    if "host" not in spec:
        w.error(node, "spec.host", "missing: name the service these subsets belong to")
    else:
        host = w.service(spec["host"], "spec.host")
    subsets: list[Subset] = []
    if "subsets" in spec:
        names: set[str] = set()
        for i, subset_node in enumerate(w.sequence(spec["subsets"], "spec.subsets") or []):
            where = f"spec.subsets[{i}]"
            fields = w.mapping(subset_node, where, _SUBSET, _SUBSET_ISTIO)
            if fields is None:
                continue
            if "name" not in fields:
                w.error(subset_node, f"{where}.name", "missing")
                continue
            subset_name = w.name(fields["name"], f"{where}.name")
            labels = w.labels(fields["labels"], f"{where}.labels") if "labels" in fields else ()
            if subset_name is None:
                continue
            if subset_name in names:
                w.error(fields["name"], f"{where}.name", f"subset {subset_name!r} is defined twice")
                continue
            names.add(subset_name)
            subsets.append(Subset(subset_name, labels))
    lb: LoadBalancerSettings | None = None
    pool: ConnectionPool | None = None
    outlier: OutlierDetection | None = None
    budget: RetryBudget | None = None
    if "trafficPolicy" in spec:
        where = "spec.trafficPolicy"
        policy = w.mapping(spec["trafficPolicy"], where, _POLICY, _POLICY_ISTIO) or {}
        if "loadBalancer" in policy:
            lb = _load_balancer(w, policy["loadBalancer"], f"{where}.loadBalancer")
        if "connectionPool" in policy:
            pool = _connection_pool(w, policy["connectionPool"], f"{where}.connectionPool")
        if "outlierDetection" in policy:
            outlier = _outlier_detection(w, policy["outlierDetection"], f"{where}.outlierDetection")
        if "retryBudget" in policy:
            budget = _retry_budget(w, policy["retryBudget"], f"{where}.retryBudget")
    if host is None:
        return None
    return DestinationRule(
        name,
        namespace,
        host,
        tuple(subsets),
        lb,
        source,
        connection_pool=pool,
        outlier_detection=outlier,
        retry_budget=budget,
    )


def _limit(w: _Walker, fields: Mapping[str, yaml.Node], key: str, path: str) -> int | None:
    """A connection pool limit: Istio's 0 means "not set" (no limit), as does a missing field."""
    if key not in fields:
        return None
    value = w.count(fields[key], f"{path}.{key}", 0, MAX_LIMIT)
    return value or None


def _connection_pool(w: _Walker, node: yaml.Node, path: str) -> ConnectionPool | None:
    fields = w.mapping(node, path, _POOL)
    if fields is None:
        return None
    before = len(w.problems)
    tcp: Mapping[str, yaml.Node] = {}
    http: Mapping[str, yaml.Node] = {}
    if "tcp" in fields:
        tcp = w.mapping(fields["tcp"], f"{path}.tcp", _POOL_TCP, _POOL_TCP_ISTIO) or {}
    if "http" in fields:
        http = w.mapping(fields["http"], f"{path}.http", _POOL_HTTP, _POOL_HTTP_ISTIO) or {}
    connect_timeout = None
    if "connectTimeout" in tcp:
        connect_timeout = w.duration(tcp["connectTimeout"], f"{path}.tcp.connectTimeout", high=3600.0)
    pool = ConnectionPool(
        max_connections=_limit(w, tcp, "maxConnections", f"{path}.tcp"),
        connect_timeout=connect_timeout,
        max_pending=_limit(w, http, "http1MaxPendingRequests", f"{path}.http"),
        max_requests=_limit(w, http, "http2MaxRequests", f"{path}.http"),
        max_retries=_limit(w, http, "maxRetries", f"{path}.http"),
        max_requests_per_connection=_limit(w, http, "maxRequestsPerConnection", f"{path}.http"),
    )
    return pool if len(w.problems) == before else None


def _outlier_detection(w: _Walker, node: yaml.Node, path: str) -> OutlierDetection | None:
    fields = w.mapping(node, path, _OUTLIER, _OUTLIER_ISTIO)
    if fields is None:
        return None
    before = len(w.problems)
    default = OutlierDetection()
    consecutive = default.consecutive_errors
    if "consecutive5xxErrors" in fields and "consecutiveErrors" in fields:
        w.error(
            fields["consecutiveErrors"],
            f"{path}.consecutiveErrors",
            "give consecutive5xxErrors only (consecutiveErrors is its deprecated alias)",
        )
    for key in ("consecutive5xxErrors", "consecutiveErrors"):
        if key in fields:
            # 0 turns this check off (Istio)
            consecutive = w.count(fields[key], f"{path}.{key}", 0, MAX_LIMIT) or None
    gateway = None
    if "consecutiveGatewayErrors" in fields:
        key = "consecutiveGatewayErrors"
        gateway = w.count(fields[key], f"{path}.{key}", 0, MAX_LIMIT) or None
    interval = default.interval
    if "interval" in fields:
        interval = w.duration(fields["interval"], f"{path}.interval", high=3600.0) or interval
    base = default.base_ejection_time
    if "baseEjectionTime" in fields:
        base = w.duration(fields["baseEjectionTime"], f"{path}.baseEjectionTime") or base
    max_percent = default.max_ejection_percent
    if "maxEjectionPercent" in fields:
        got = w.count(fields["maxEjectionPercent"], f"{path}.maxEjectionPercent", 0, 100)
        max_percent = max_percent if got is None else got
    if len(w.problems) != before:
        return None
    return OutlierDetection(consecutive, gateway, interval, base, max_percent)


def _retry_budget(w: _Walker, node: yaml.Node, path: str) -> RetryBudget | None:
    fields = w.mapping(node, path, _BUDGET)
    if fields is None:
        return None
    before = len(w.problems)
    default = RetryBudget()
    percent = default.percent
    if "percent" in fields:
        got = w.percent(fields["percent"], f"{path}.percent")
        if got == 0:
            w.error(fields["percent"], f"{path}.percent.value", "0 allows no retry: set retries.attempts: 0")
        percent = percent if got is None else got
    minimum = default.min_retry_concurrency
    if "minRetryConcurrency" in fields:
        got_min = w.count(fields["minRetryConcurrency"], f"{path}.minRetryConcurrency", 0, MAX_LIMIT)
        minimum = minimum if got_min is None else got_min
    return RetryBudget(percent, minimum) if len(w.problems) == before else None


def _load_balancer(w: _Walker, node: yaml.Node, path: str) -> LoadBalancerSettings | None:
    fields = w.mapping(node, path, _LB, _LB_ISTIO)
    if fields is None:
        return None
    if "simple" in fields and "consistentHash" in fields:
        w.error(node, path, "give simple or consistentHash, not both")
        return None
    if "simple" in fields:
        simple = w.string(fields["simple"], f"{path}.simple")
        if simple is None:
            return None
        if simple not in LB_SIMPLE:
            known = ", ".join(k for k in LB_SIMPLE if k != "LEAST_CONN")
            w.error(fields["simple"], f"{path}.simple", f"{simple!r}: Plexus supports {known}")
            return None
        return LoadBalancerSettings(simple=LB_SIMPLE[simple])
    if "consistentHash" in fields:
        where = f"{path}.consistentHash"
        hashing = w.mapping(fields["consistentHash"], where, _HASH, _HASH_ISTIO)
        if hashing is None:
            return None
        if "httpHeaderName" not in hashing:
            w.error(fields["consistentHash"], f"{where}.httpHeaderName", "missing")
            return None
        header = w.string(hashing["httpHeaderName"], f"{where}.httpHeaderName")
        if header is None:
            return None
        if not HEADER_NAME.match(header.lower()) or header.startswith(":"):
            w.error(hashing["httpHeaderName"], f"{where}.httpHeaderName", f"{header!r} is not a header name")
            return None
        return LoadBalancerSettings(hash_header=header.lower())
    return None


@dataclass(frozen=True, slots=True)
class CrossProblem:
    """A problem that spans resources, found on typed objects (so a merged set can be checked without its
    YAML). ``source`` is the resource's file:line; ``path`` its field; ``at_document``: report it at the
    document's line rather than at the field's."""

    kind: str
    name: str
    source: str
    path: str
    message: str
    at_document: bool = False

    def __str__(self) -> str:
        return f"{self.source}: {self.kind} {self.name}: {self.path}: {self.message}"


def routing_problems(
    services: Sequence[VirtualService], rules: Sequence[DestinationRule]
) -> list[CrossProblem]:
    """What spans routing resources: one VirtualService and one DestinationRule per host; every subset a
    route or mirror names is defined by the DestinationRule of its host. Earlier resources win."""
    out: list[CrossProblem] = []
    subsets: dict[str, set[str]] = {}
    rule_at: dict[str, str] = {}
    for rule in rules:
        if rule.host in rule_at:
            message = f"{rule.host!r} already has a DestinationRule (at {rule_at[rule.host]})"
            out.append(CrossProblem("DestinationRule", rule.name, rule.source, "spec.host", message, True))
            continue
        rule_at[rule.host] = rule.source
        subsets[rule.host] = {s.name for s in rule.subsets}
    service_at: dict[str, str] = {}
    for vs in services:
        for host in vs.hosts:
            if host in service_at:
                message = f"{host!r} already has a VirtualService (at {service_at[host]})"
                out.append(CrossProblem("VirtualService", vs.name, vs.source, "spec.hosts", message, True))
            else:
                service_at[host] = vs.source
        for i, http in enumerate(vs.http):
            named = [
                (f"spec.http[{i}].route[{j}].destination", d.host, d.subset) for j, d in enumerate(http.route)
            ]
            if http.mirror is not None:
                named.append((f"spec.http[{i}].mirror", http.mirror.host, http.mirror.subset))
            for where, host, subset in named:
                if subset is None or subset in subsets.get(host, set()):
                    continue
                defined = sorted(subsets.get(host, set()))
                hint = f"defined: {', '.join(defined)}" if defined else "no DestinationRule defines any"
                message = f"subset {subset!r} of {host!r} is not defined ({hint})"
                out.append(CrossProblem("VirtualService", vs.name, vs.source, f"{where}.subset", message))
    return out


def report_across(
    w: _Walker, problems: Sequence[CrossProblem], parsed: Sequence[tuple[object, yaml.Node]]
) -> None:
    """Cross-resource problems as the walker's problems, at the line of the field they name."""
    docs = {getattr(obj, "source", ""): doc for obj, doc in parsed}
    for problem in problems:
        doc = docs.get(problem.source)
        if doc is None:
            continue
        w.prefix = f"{problem.kind} {problem.name}: "
        node = doc if problem.at_document else node_at(doc, problem.path)
        w.error(node, problem.path, problem.message)


_PATH_PART: Final = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def node_at(doc: yaml.Node, path: str) -> yaml.Node:
    """The node of ``path`` ("spec.http[0].route[1].destination.subset") in ``doc``, or its deepest
    existing ancestor: the line a problem about that field is reported at."""
    node = doc
    for key, index in _PATH_PART.findall(path):
        child = _child(node, key) if key else _index(node, int(index))
        if child is None:
            break
        node = child
    return node


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if node is None or not isinstance(node.value, list):
        return None
    for item in node.value:
        if isinstance(item, tuple) and str(item[0].value) == key:
            child: yaml.Node = item[1]
            return child
    return None


def _index(node: yaml.Node | None, i: int) -> yaml.Node | None:
    if node is None or not isinstance(node.value, list) or i >= len(node.value):
        return None
    item = node.value[i]
    return None if isinstance(item, tuple) else item
