"""Spec parsers of Plexus's own kinds (``RateLimitPolicy``, ``UnitRouting``, ``TrafficShift``; shapes in
plexus.config.policy_kinds), on route_config's YAML walker: every problem with its line and field path.

Used only by ``plexus.config.resources.parse_resources``; PyYAML is never imported here (nodes come in).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Final, cast

from plexus.config.policy_kinds import (
    CALLER_HEADER,
    LOAD_TEST_HEADER,
    PLEXUS_API_VERSIONS,
    AdaptiveLimit,
    Failover,
    GlobalRateLimit,
    LocalRateLimit,
    RateLimitPolicy,
    RateUnit,
    Scope,
    ShiftBy,
    ShiftStep,
    TrafficShift,
    UnitRouting,
)
from plexus.config.route_config import HEADER_NAME, HttpMatch, KindSpec, _http_match, _Walker

if TYPE_CHECKING:
    import yaml

# A unit, zone or version name: what an instance publishes as its zone, unit or version label.
GROUP_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$")
MAX_TOKENS: Final = 1_000_000_000  # a bucket larger than this is no limit; refuse it as a typo
MAX_RATE: Final = 1e9  # requests per second (or minute): beyond what any sidecar sees
TIME_OF_DAY: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

_RLP: Final = frozenset({"host", "local", "global", "adaptive"})
_LOCAL: Final = frozenset({"name", "match", "perCaller", "callerHeader", "tokens", "fillPerSecond"})
_GLOBAL: Final = frozenset(
    {"name", "match", "perCaller", "callerHeader", "requestsPerUnit", "unit", "fallbackPerSecond"}
)
_ADAPTIVE: Final = frozenset({"cpuThreshold", "loadThreshold", "maxConcurrency", "loadTestHeader"})
_UNIT_ROUTING: Final = frozenset({"hosts", "scope", "failover", "drain"})
_FAILOVER: Final = frozenset({"from", "to"})
_SHIFT: Final = frozenset({"host", "by", "weights", "schedule", "start"})
_STEP: Final = frozenset({"at", "weights"})
_MATCH_FIELDS: Final = frozenset({"name", "headers", "uri", "method"})


def plexus_kinds() -> dict[str, KindSpec]:
    return {
        "RateLimitPolicy": KindSpec(PLEXUS_API_VERSIONS, rate_limit_policy, "a Plexus kind"),
        "UnitRouting": KindSpec(PLEXUS_API_VERSIONS, unit_routing, "a Plexus kind"),
        "TrafficShift": KindSpec(PLEXUS_API_VERSIONS, traffic_shift, "a Plexus kind"),
    }


def _choice(w: _Walker, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str | None:
    text = w.string(node, path)
    if text is not None and text not in choices:
        w.error(node, path, f"{text!r} is not one of {', '.join(choices)}")
        return None
    return text


def _header(w: _Walker, node: yaml.Node, path: str) -> str | None:
    """A plain header name (no pseudo-header), lower-cased: lookups are lower-case."""
    text = w.string(node, path)
    if text is None:
        return None
    if text.startswith(":") or not HEADER_NAME.match(text.lower()):
        w.error(node, path, f"{text!r} is not a header name")
        return None
    return text.lower()


def _group(w: _Walker, node: yaml.Node, path: str, what: str) -> str | None:
    text = w.string(node, path)
    if text is not None and not GROUP_NAME.match(text):
        w.error(node, path, f"{text!r} is not a {what} name (letters, digits, . _ -; at most 63)")
        return None
    return text


def _groups(w: _Walker, node: yaml.Node, path: str, what: str) -> tuple[str, ...] | None:
    """A list of distinct unit/zone names."""
    nodes = w.sequence(node, path)
    if nodes is None:
        return None
    out: list[str] = []
    ok = True
    for i, item in enumerate(nodes):
        name = _group(w, item, f"{path}[{i}]", what)
        if name is None:
            ok = False
        elif name in out:
            w.error(item, f"{path}[{i}]", f"{name!r} is listed twice")
            ok = False
        else:
            out.append(name)
    return tuple(out) if ok else None


def _matches(w: _Walker, node: yaml.Node, path: str) -> tuple[HttpMatch, ...] | None:
    nodes = w.sequence(node, path)
    if nodes is None:
        return None
    before = len(w.problems)
    out: list[HttpMatch] = []
    for i, item in enumerate(nodes):
        got = _http_match(w, item, f"{path}[{i}]")
        if got is not None:
            out.append(got)
    return tuple(out) if len(w.problems) == before else None


# -- RateLimitPolicy ---------------------------------------------------------------------------------


def rate_limit_policy(
    w: _Walker, node: yaml.Node, name: str, namespace: str, source: str
) -> RateLimitPolicy | None:
    spec = w.mapping(node, "spec", _RLP)
    if spec is None:
        return None
    before = len(w.problems)
    host = None
    if "host" not in spec:
        w.error(node, "spec.host", "missing: name the service these limits protect")
    else:
        host = w.service(spec["host"], "spec.host")
    if not {"local", "global", "adaptive"} & spec.keys():
        w.error(node, "spec", "give local, global or adaptive limits")
    rule_at: dict[str, str] = {}  # rule names are unique across local and global (stats, token keys)
    local: list[LocalRateLimit] = []
    local_nodes = w.sequence(spec["local"], "spec.local") if "local" in spec else None
    for i, item in enumerate(local_nodes or []):
        got = _local(w, item, f"spec.local[{i}]", rule_at)
        if got is not None:
            local.append(got)
    global_: list[GlobalRateLimit] = []
    global_nodes = w.sequence(spec["global"], "spec.global") if "global" in spec else None
    for i, item in enumerate(global_nodes or []):
        got_global = _global(w, item, f"spec.global[{i}]", rule_at)
        if got_global is not None:
            global_.append(got_global)
    adaptive = _adaptive(w, spec["adaptive"], "spec.adaptive") if "adaptive" in spec else None
    if host is None or len(w.problems) != before:
        return None
    if not local and not global_ and adaptive is None:
        w.error(node, "spec", "no limits: local and global are empty")
        return None
    return RateLimitPolicy(name, namespace, host, tuple(local), tuple(global_), adaptive, source)


def _rule_common(
    w: _Walker, node: yaml.Node, fields: Mapping[str, yaml.Node], path: str, rule_at: dict[str, str]
) -> tuple[str | None, tuple[HttpMatch, ...], bool, str]:
    """name (unique across local and global rules), match, perCaller, callerHeader."""
    name = None
    if "name" not in fields:
        w.error(node, f"{path}.name", "missing: every rule is named (stats and the token service use it)")
    else:
        name = w.name(fields["name"], f"{path}.name")
        if name is not None and name in rule_at:
            w.error(
                fields["name"], f"{path}.name", f"rule {name!r} is defined twice (first at {rule_at[name]})"
            )
            name = None
        elif name is not None:
            rule_at[name] = path
    match: tuple[HttpMatch, ...] = ()
    if "match" in fields:
        match = _matches(w, fields["match"], f"{path}.match") or ()
    per_caller = False
    if "perCaller" in fields:
        per_caller = bool(w.boolean(fields["perCaller"], f"{path}.perCaller"))
    caller_header = CALLER_HEADER
    if "callerHeader" in fields:
        caller_header = _header(w, fields["callerHeader"], f"{path}.callerHeader") or CALLER_HEADER
        if not per_caller:
            w.error(fields["callerHeader"], f"{path}.callerHeader", "only used with perCaller: true")
    return name, match, per_caller, caller_header


def _local(w: _Walker, node: yaml.Node, path: str, rule_at: dict[str, str]) -> LocalRateLimit | None:
    fields = w.mapping(node, path, _LOCAL)
    if fields is None:
        return None
    name, match, per_caller, caller_header = _rule_common(w, node, fields, path, rule_at)
    tokens = None
    if "tokens" not in fields:
        w.error(node, f"{path}.tokens", "missing: the bucket's size (the burst it admits)")
    else:
        tokens = w.count(fields["tokens"], f"{path}.tokens", 1, MAX_TOKENS)
    fill = None
    if "fillPerSecond" not in fields:
        w.error(node, f"{path}.fillPerSecond", "missing: the tokens added each second")
    else:
        fill = w.fraction(fields["fillPerSecond"], f"{path}.fillPerSecond", 0.0, MAX_RATE, open_low=True)
    if name is None or tokens is None or fill is None:
        return None
    return LocalRateLimit(name, tokens, fill, match, per_caller, caller_header)


def _global(w: _Walker, node: yaml.Node, path: str, rule_at: dict[str, str]) -> GlobalRateLimit | None:
    fields = w.mapping(node, path, _GLOBAL)
    if fields is None:
        return None
    name, match, per_caller, caller_header = _rule_common(w, node, fields, path, rule_at)
    requests = None
    if "requestsPerUnit" not in fields:
        w.error(node, f"{path}.requestsPerUnit", "missing: the requests all sidecars admit per unit")
    else:
        requests = w.count(fields["requestsPerUnit"], f"{path}.requestsPerUnit", 1, MAX_TOKENS)
    unit: RateUnit | None = "second"
    if "unit" in fields:
        unit = cast("RateUnit | None", _choice(w, fields["unit"], f"{path}.unit", ("second", "minute")))
    fallback = None
    if "fallbackPerSecond" in fields:
        fallback = w.fraction(
            fields["fallbackPerSecond"], f"{path}.fallbackPerSecond", 0.0, MAX_RATE, open_low=False
        )
        if fallback is None:
            return None
    if name is None or requests is None or unit is None:
        return None
    return GlobalRateLimit(name, requests, unit, match, per_caller, caller_header, fallback)


def _adaptive(w: _Walker, node: yaml.Node, path: str) -> AdaptiveLimit | None:
    fields = w.mapping(node, path, _ADAPTIVE)
    if fields is None:
        return None
    before = len(w.problems)
    default = AdaptiveLimit()

    def _null(key: str) -> bool:  # an explicit null turns that check off
        value = fields.get(key)
        return isinstance(value, w.yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null"

    cpu = default.cpu_threshold
    if "cpuThreshold" in fields and not _null("cpuThreshold"):
        cpu = w.fraction(fields["cpuThreshold"], f"{path}.cpuThreshold", 0.0, 1.0, open_low=True)
    elif _null("cpuThreshold"):
        cpu = None
    load = None
    if "loadThreshold" in fields and not _null("loadThreshold"):
        load = w.fraction(fields["loadThreshold"], f"{path}.loadThreshold", 0.0, 1000.0, open_low=True)
    concurrency = None
    if "maxConcurrency" in fields and not _null("maxConcurrency"):
        concurrency = w.count(fields["maxConcurrency"], f"{path}.maxConcurrency", 1, MAX_TOKENS)
    header = LOAD_TEST_HEADER
    if "loadTestHeader" in fields:
        header = _header(w, fields["loadTestHeader"], f"{path}.loadTestHeader") or header
    if len(w.problems) != before:
        return None
    if cpu is None and load is None and concurrency is None:
        w.error(
            node, path, "give cpuThreshold, loadThreshold or maxConcurrency: nothing would trigger shedding"
        )
        return None
    return AdaptiveLimit(cpu, load, concurrency, header)


# -- UnitRouting -------------------------------------------------------------------------------------


def unit_routing(w: _Walker, node: yaml.Node, name: str, namespace: str, source: str) -> UnitRouting | None:
    spec = w.mapping(node, "spec", _UNIT_ROUTING)
    if spec is None:
        return None
    before = len(w.problems)
    hosts: list[str] = []
    if "hosts" not in spec:
        w.error(node, "spec.hosts", 'missing: name the services it applies to, or "*" for every one')
    else:
        host_nodes = w.sequence(spec["hosts"], "spec.hosts")
        if host_nodes is not None and not host_nodes:
            w.error(spec["hosts"], "spec.hosts", 'empty: name at least one service, or "*"')
        for i, item in enumerate(host_nodes or []):
            where = f"spec.hosts[{i}]"
            text = w.string(item, where)
            if text == "*":
                host: str | None = text
            else:
                host = w.service(item, where) if text is not None else None
            if host is None:
                continue
            if host in hosts:
                w.error(item, where, f"{host!r} is listed twice")
                continue
            hosts.append(host)
        if "*" in hosts and len(hosts) > 1:
            w.error(spec["hosts"], "spec.hosts", '"*" already names every service: give it alone')
    scope: Scope | None = "unit"
    if "scope" in spec:
        scope = cast("Scope | None", _choice(w, spec["scope"], "spec.scope", ("unit", "zone")))
    what = scope or "unit"
    failover: list[Failover] = []
    if "failover" in spec:
        seen: dict[str, int] = {}
        for i, item in enumerate(w.sequence(spec["failover"], "spec.failover") or []):
            got = _failover(w, item, f"spec.failover[{i}]", what)
            if got is None:
                continue
            if got.from_ in seen:
                w.error(
                    item,
                    f"spec.failover[{i}].from",
                    f"{got.from_!r} already has a failover (spec.failover[{seen[got.from_]}])",
                )
                continue
            seen[got.from_] = i
            failover.append(got)
    drain: tuple[str, ...] = ()
    if "drain" in spec:
        drain = _groups(w, spec["drain"], "spec.drain", what) or ()
    if len(w.problems) != before or scope is None:
        return None
    return UnitRouting(name, namespace, tuple(hosts), scope, tuple(failover), drain, source)


def _failover(w: _Walker, node: yaml.Node, path: str, what: str) -> Failover | None:
    fields = w.mapping(node, path, _FAILOVER)
    if fields is None:
        return None
    source = None
    if "from" not in fields:
        w.error(node, f"{path}.from", f"missing: the {what} whose callers fail over")
    else:
        source = _group(w, fields["from"], f"{path}.from", what)
    targets = None
    if "to" not in fields:
        w.error(node, f"{path}.to", f"missing: the {what}s to fail over to, in order")
    else:
        targets = _groups(w, fields["to"], f"{path}.to", what)
        if targets is not None and not targets:
            w.error(fields["to"], f"{path}.to", f"empty: name at least one {what}")
            targets = None
        listed = (
            [str(n.value) for n in fields["to"].value]
            if isinstance(fields["to"], w.yaml.SequenceNode)
            else []
        )
        if source is not None and source in listed:
            w.error(fields["to"], f"{path}.to", f"{source!r} fails over to itself")
            targets = None
    if source is None or targets is None:
        return None
    return Failover(source, targets)


# -- TrafficShift ------------------------------------------------------------------------------------


def traffic_shift(w: _Walker, node: yaml.Node, name: str, namespace: str, source: str) -> TrafficShift | None:
    spec = w.mapping(node, "spec", _SHIFT)
    if spec is None:
        return None
    before = len(w.problems)
    host = None
    if "host" not in spec:
        w.error(node, "spec.host", "missing: name the service whose traffic moves")
    else:
        host = w.service(spec["host"], "spec.host")
    by: ShiftBy | None = "unit"
    if "by" in spec:
        by = cast("ShiftBy | None", _choice(w, spec["by"], "spec.by", ("unit", "zone", "version")))
    what = by or "unit"
    weights: tuple[tuple[str, int], ...] = ()
    if "weights" in spec:
        weights = _weights(w, spec["weights"], "spec.weights", what) or ()
    elif "schedule" not in spec:
        w.error(node, "spec.weights", f"missing: give each {what}'s share (summing to 100), or a schedule")
    steps: list[ShiftStep] = []
    if "schedule" in spec:
        step_nodes = w.sequence(spec["schedule"], "spec.schedule")
        if step_nodes is not None and not step_nodes:
            w.error(spec["schedule"], "spec.schedule", "empty: give at least one step, or leave it out")
        at_index: dict[int, int] = {}
        for i, item in enumerate(step_nodes or []):
            step = _step(w, item, f"spec.schedule[{i}]", what)
            if step is None:
                continue
            if step.at_minute in at_index:
                w.error(
                    item, f"spec.schedule[{i}].at", f"same time as spec.schedule[{at_index[step.at_minute]}]"
                )
                continue
            at_index[step.at_minute] = i
            steps.append(step)
    start = None
    if "start" in spec:
        start = _instant(w, spec["start"], "spec.start")
    if host is None or by is None or len(w.problems) != before:
        return None
    steps.sort(key=lambda s: s.at_minute)  # in time-of-day order: the one in force is the last one passed
    return TrafficShift(name, namespace, host, by, weights, tuple(steps), start, source)


def _weights(w: _Walker, node: yaml.Node, path: str, what: str) -> tuple[tuple[str, int], ...] | None:
    if not isinstance(node, w.yaml.MappingNode):
        w.error(node, path, f"must be a mapping of {what}: percent")
        return None
    out: dict[str, int] = {}
    ok = True
    for key_node, value_node in node.value:
        group = _group(w, key_node, f"{path}.{key_node.value}", what)
        share = w.count(value_node, f"{path}.{key_node.value}", 0, 100)
        if group is not None and group in out:
            w.error(key_node, f"{path}.{group}", "repeated")
            ok = False
        elif group is None or share is None:
            ok = False
        else:
            out[group] = share
    if not ok:
        return None
    if not out:
        w.error(node, path, f"empty: give each {what}'s share, summing to 100")
        return None
    if sum(out.values()) != 100:
        w.error(node, path, f"weights sum to {sum(out.values())}, not 100")
        return None
    return tuple(sorted(out.items()))


def _step(w: _Walker, node: yaml.Node, path: str, what: str) -> ShiftStep | None:
    fields = w.mapping(node, path, _STEP)
    if fields is None:
        return None
    minute = None
    if "at" not in fields:
        w.error(node, f"{path}.at", 'missing: the time of day (UTC) it starts, "HH:MM"')
    else:
        text = w.string(fields["at"], f"{path}.at")
        found = TIME_OF_DAY.match(text) if text is not None else None
        if text is not None and found is None:
            w.error(fields["at"], f"{path}.at", f'{text!r} is not a time of day "HH:MM" (00:00..23:59, UTC)')
        elif found is not None:
            minute = int(found.group(1)) * 60 + int(found.group(2))
    weights = None
    if "weights" not in fields:
        w.error(node, f"{path}.weights", f"missing: each {what}'s share from that time on")
    else:
        weights = _weights(w, fields["weights"], f"{path}.weights", what)
    if minute is None or weights is None:
        return None
    return ShiftStep(minute, weights)


def _instant(w: _Walker, node: yaml.Node, path: str) -> float | None:
    """An RFC 3339 date-time with its offset ("2026-11-26T22:00:00Z"), as epoch seconds."""
    text = w.string(node, path)  # YAML may type it as a timestamp; its source text is what we read
    if text is None:
        return None
    problem = f"{text!r} is not an RFC 3339 date-time such as 2026-11-26T22:00:00Z"
    if "T" not in text.upper():
        w.error(node, path, problem)
        return None
    try:
        instant = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        w.error(node, path, problem)
        return None
    if instant.tzinfo is None:
        w.error(node, path, f"{text!r} has no offset: add Z (UTC) or +HH:MM")
        return None
    return instant.timestamp()
