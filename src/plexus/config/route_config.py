"""Routing resources in Istio's shapes: ``VirtualService`` and ``DestinationRule``, parsed into typed objects.

Theory of operation: ``parse_routes(text, file_name)`` composes the YAML into nodes (PyYAML keeps each node's
line), walks every document once and collects every problem it meets, each as ``file:line: kind name: field
path: message``; then it checks what spans documents (a subset a route names must be defined by a
DestinationRule of that host; one VirtualService and one DestinationRule per host). Nothing stops at the first
error. A field Istio has that Plexus does not implement yet is refused as "not supported by Plexus" (users see
that their retries are not applied instead of silently losing them); a field Istio does not have is an
"unknown field".

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

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
                "match": [
                    {
                        "name": m.name,
                        "headers": {h: _sm_dict(s) for h, s in m.headers},
                        "uri": _sm_dict(m.uri),
                        "method": _sm_dict(m.method),
                    }
                    for m in rule.match
                ],
                "route": [
                    {"destination": {"host": d.host, "subset": d.subset}, "weight": d.weight}
                    for d in rule.route
                ],
            }
            for rule in vs.http
        ],
    }


def _vs_from(d: Mapping[str, Any]) -> VirtualService:
    rules = []
    for rule in d["http"]:
        matches = tuple(
            HttpMatch(
                headers=tuple((h, s) for h, raw in m["headers"].items() if (s := _sm_from(raw)) is not None),
                uri=_sm_from(m["uri"]),
                method=_sm_from(m["method"]),
                name=m["name"],
            )
            for m in rule["match"]
        )
        route = tuple(
            RouteDestination(r["destination"]["host"], r["destination"]["subset"], r["weight"])
            for r in rule["route"]
        )
        rules.append(HttpRoute(rule["name"], matches, route))
    return VirtualService(d["name"], d["namespace"], tuple(d["hosts"]), tuple(rules), d["source"])


def _dr_dict(dr: DestinationRule) -> dict[str, Any]:
    lb = dr.load_balancer
    return {
        "name": dr.name,
        "namespace": dr.namespace,
        "host": dr.host,
        "source": dr.source,
        "subsets": [{"name": s.name, "labels": dict(s.labels)} for s in dr.subsets],
        "load_balancer": None if lb is None else {"simple": lb.simple, "hash_header": lb.hash_header},
    }


def _dr_from(d: Mapping[str, Any]) -> DestinationRule:
    lb = d["load_balancer"]
    return DestinationRule(
        d["name"],
        d["namespace"],
        d["host"],
        tuple(Subset(s["name"], tuple(s["labels"].items())) for s in d["subsets"]),
        None if lb is None else LoadBalancerSettings(lb["simple"], lb["hash_header"]),
        d["source"],
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
_HTTP: Final = frozenset({"name", "match", "route"})
_HTTP_ISTIO: Final = frozenset(
    {
        "redirect",
        "directResponse",
        "delegate",
        "rewrite",
        "timeout",
        "retries",
        "fault",
        "mirror",
        "mirrors",
        "mirrorPercent",
        "mirror_percent",
        "mirrorPercentage",
        "corsPolicy",
        "headers",
    }
)
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
_POLICY: Final = frozenset({"loadBalancer"})
_POLICY_ISTIO: Final = frozenset(
    {
        "connectionPool",
        "outlierDetection",
        "tls",
        "portLevelSettings",
        "tunnel",
        "proxyProtocol",
        "retryBudget",
    }
)
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

    def error(self, node: yaml.Node, path: str, message: str) -> None:
        where = self.prefix + path if path else self.prefix.rstrip(": ")
        self.problems.append(Problem(self.file, node.start_mark.line + 1, where, message))

    def line(self, node: yaml.Node) -> str:
        return f"{self.file}:{node.start_mark.line + 1}"

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
    import yaml  # here, not at the top: see the module's docstring

    walker = _Walker(yaml, file_name)
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise RouteConfigError([Problem(file_name, line, "(file)", f"not valid YAML: {problem}")]) from None
    services: list[tuple[VirtualService, yaml.Node]] = []
    rules: list[tuple[DestinationRule, yaml.Node]] = []
    for index, doc in enumerate(documents):
        if doc is None or (isinstance(doc, yaml.ScalarNode) and doc.tag == "tag:yaml.org,2002:null"):
            continue  # an empty document (a stray ---)
        walker.prefix = f"document {index + 1}: "
        parsed = _document(walker, doc)
        if isinstance(parsed, VirtualService):
            services.append((parsed, doc))
        elif isinstance(parsed, DestinationRule):
            rules.append((parsed, doc))
    _check_across(walker, services, rules)
    if walker.problems:
        raise RouteConfigError(sorted(walker.problems, key=lambda p: p.line))
    return RoutingConfig(tuple(s for s, _ in services), tuple(r for r, _ in rules), file_name)


def _document(w: _Walker, doc: yaml.Node) -> VirtualService | DestinationRule | None:
    top = w.mapping(doc, "", _DOC)
    if top is None:
        return None
    kind_node = top.get("kind")
    kind = w.string(kind_node, "kind") if kind_node is not None else None
    if kind_node is None:
        w.error(doc, "kind", f"missing; one of {', '.join(KINDS)}")
    api_node = top.get("apiVersion")
    if api_node is None:
        w.error(doc, "apiVersion", f"missing; one of {', '.join(sorted(API_VERSIONS))}")
    else:
        api = w.string(api_node, "apiVersion")
        if api is not None and api not in API_VERSIONS:
            w.error(api_node, "apiVersion", f"{api!r} is not one of {', '.join(sorted(API_VERSIONS))}")
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
                name = w.name(meta["name"], "metadata.name") or ""
            if "namespace" in meta:
                namespace = w.name(meta["namespace"], "metadata.namespace") or namespace
    if kind is not None and kind_node is not None:
        if kind in OTHER_ISTIO_KINDS:
            takes = ", ".join(KINDS)
            w.error(kind_node, "kind", f"{kind} is not supported by Plexus (yet); this file takes {takes}")
            return None
        if kind not in KINDS:
            w.error(kind_node, "kind", f"unknown kind {kind!r}; this file takes {', '.join(KINDS)}")
            return None
    w.prefix = f"{kind} {name or '?'}: "
    spec_node = top.get("spec")
    if spec_node is None:
        w.error(doc, "spec", "missing")
        return None
    if kind == "VirtualService":
        return _virtual_service(w, spec_node, name, namespace, w.line(doc))
    if kind == "DestinationRule":
        return _destination_rule(w, spec_node, name, namespace, w.line(doc))
    return None


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
    return HttpRoute(name, tuple(matches), tuple(destinations))


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
    if "trafficPolicy" in spec:
        policy = w.mapping(spec["trafficPolicy"], "spec.trafficPolicy", _POLICY, _POLICY_ISTIO)
        if policy is not None and "loadBalancer" in policy:
            lb = _load_balancer(w, policy["loadBalancer"], "spec.trafficPolicy.loadBalancer")
    if host is None:
        return None
    return DestinationRule(name, namespace, host, tuple(subsets), lb, source)


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


def _check_across(
    w: _Walker,
    services: list[tuple[VirtualService, yaml.Node]],
    rules: list[tuple[DestinationRule, yaml.Node]],
) -> None:
    """What spans documents: one VirtualService and one DestinationRule per host; subsets that exist."""
    subsets: dict[str, set[str]] = {}
    rule_at: dict[str, str] = {}
    for rule, doc in rules:
        w.prefix = f"DestinationRule {rule.name}: "
        if rule.host in rule_at:
            w.error(
                doc, "spec.host", f"{rule.host!r} already has a DestinationRule (at {rule_at[rule.host]})"
            )
            continue
        rule_at[rule.host] = rule.source
        subsets[rule.host] = {s.name for s in rule.subsets}
    service_at: dict[str, str] = {}
    for vs, doc in services:
        w.prefix = f"VirtualService {vs.name}: "
        for host in vs.hosts:
            if host in service_at:
                w.error(doc, "spec.hosts", f"{host!r} already has a VirtualService (at {service_at[host]})")
            else:
                service_at[host] = vs.source
        spec = _child(doc, "spec")
        for i, http in enumerate(vs.http):
            for j, dest in enumerate(http.route):
                if dest.subset is None:
                    continue
                if dest.subset not in subsets.get(dest.host, set()):
                    node = _subset_node(spec, i, j) or doc
                    defined = sorted(subsets.get(dest.host, set()))
                    hint = f"defined: {', '.join(defined)}" if defined else "no DestinationRule defines any"
                    w.error(
                        node,
                        f"spec.http[{i}].route[{j}].destination.subset",
                        f"subset {dest.subset!r} of {dest.host!r} is not defined ({hint})",
                    )


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


def _subset_node(spec: yaml.Node | None, rule: int, route: int) -> yaml.Node | None:
    """The node of ``http[rule].route[route].destination.subset`` (for its line)."""
    http = _child(spec, "http")
    r = _index(http, rule)
    routes = _child(r, "route")
    d = _index(routes, route)
    return _child(_child(d, "destination"), "subset")
