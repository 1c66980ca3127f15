"""The HTTP/1.1 path applies the request policy: fault, timeouts, retries (with the budget), circuit breaking,
outlier reports, mirroring, the ingress gate and the caller header; with no policy the plain path is kept.

A real DataPlane on a uvloop thread, real upstream servers (h11) and blocking client sockets; policy is
installed with ``DataPlane.set_policy`` from the typed resources, as the sidecar installs a snapshot."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h11

from plexus.config.policy_kinds import AdaptiveLimit, LocalRateLimit, RateLimitPolicy
from plexus.config.resources import PolicySet
from plexus.config.route_config import (
    ConnectionPool,
    DestinationRule,
    HttpFault,
    HttpMatch,
    HttpRetry,
    HttpRoute,
    Mirror,
    OutlierDetection,
    RetryBudget,
    RouteDestination,
    StringMatch,
    Subset,
    VirtualService,
)
from plexus.core.address import HostPort
from plexus.proxy import Cluster
from plexus.transport.http_exchange import RETRY_BUFFER_BYTES, _shadow_host
from transport.conftest import Mesh
from transport.upstreams import HttpUpstream, LoopThread, Received, closed_port, read_response

Response = tuple[int, dict[str, str], bytes]


@dataclass
class Flaky(HttpUpstream):
    """An upstream whose answer is set per instance: a status, a delay, or a reset before any answer."""

    status: int = 200
    delay: float = 0.0
    reset: bool = False

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, req: h11.Request, body: bytes
    ) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        target = req.target.decode()
        self.received.append(Received(req.method.decode(), target, headers, body))  # on arrival
        if self.reset:
            writer.transport.abort()
            raise ConnectionError("reset on purpose")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            payload = b"failed by " + self.name.encode()
        else:
            payload = body if target == "/echo" else self.name.encode()
        out = [("x-upstream", self.name), ("content-length", str(len(payload)))]
        writer.write(conn.send(h11.Response(status_code=self.status, headers=out)) or b"")
        if req.method != b"HEAD":
            writer.write(conn.send(h11.Data(data=payload)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


def flaky(mesh: Mesh, service: str, *specs: dict[str, Any]) -> list[Flaky]:
    ups = [Flaky(f"{service}-{i}", **spec) for i, spec in enumerate(specs)]
    for up in ups:
        mesh.lt.run(up.start())
    mesh.upstreams += ups
    mesh.set_instances(service, [f"127.0.0.1:{u.port}" for u in ups])
    return ups


def request(
    address: Any,
    path: str = "/",
    host: str = "svc",
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status, got, payload, _ = read_response(s, timeout=timeout, method=method)
        return status, got, payload


def install(mesh: Mesh, *resources: VirtualService | DestinationRule | RateLimitPolicy) -> None:
    mesh.lt.call(
        mesh.plane.set_policy,
        PolicySet(
            virtual_services=tuple(r for r in resources if isinstance(r, VirtualService)),
            destination_rules=tuple(r for r in resources if isinstance(r, DestinationRule)),
            rate_limits=tuple(r for r in resources if isinstance(r, RateLimitPolicy)),
        ),
    )


def vs(host: str, *rules: HttpRoute) -> VirtualService:
    return VirtualService(name=host, namespace="default", hosts=(host,), http=rules)


def rule(
    to: str = "svc",
    *,
    subset: str | None = None,
    match: tuple[HttpMatch, ...] = (),
    timeout: float | None = None,
    retries: HttpRetry | None = None,
    fault: HttpFault | None = None,
    mirror: Mirror | None = None,
) -> HttpRoute:
    return HttpRoute(None, match, (RouteDestination(to, subset),), timeout, retries, fault, mirror)


def dr(
    host: str,
    pool: ConnectionPool | None = None,
    outlier: OutlierDetection | None = None,
    budget: RetryBudget | None = None,
    subsets: tuple[Subset, ...] = (),
) -> DestinationRule:
    return DestinationRule(
        name=host,
        namespace="default",
        host=host,
        subsets=subsets,
        connection_pool=pool,
        outlier_detection=outlier,
        retry_budget=budget,
    )


def detector(mesh: Mesh, service: str = "svc") -> Any:
    """The cluster's outlier detector's view."""
    outlier = cluster(mesh, service).outlier
    assert outlier is not None
    return outlier.view()


def cluster(mesh: Mesh, service: str = "svc") -> Cluster:
    found = mesh.plane.clusters.get(service)
    assert found is not None
    return found


def assert_released(mesh: Mesh, service: str = "svc") -> None:
    """Every request ended: the breaker holds no request, pending wait or retry; nothing waits for room."""

    def settled() -> bool:
        breaker = cluster(mesh, service).breaker
        return (breaker.requests, breaker.pending, breaker.retries) == (0, 0, 0)

    deadline = time.monotonic() + 5
    while not mesh.lt.call(settled):
        assert time.monotonic() < deadline, mesh.lt.call(lambda: cluster(mesh, service).breaker.view())
        time.sleep(0.02)
    assert not mesh.lt.call(lambda: dict(mesh.plane.ctx.pool.waiters))


def in_parallel(count: int, fn: Any, *args: Any, **kwargs: Any) -> list[Any]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: fn(*args, **kwargs), range(count)))


RETRY_5XX = HttpRetry(attempts=2, retry_on=("5xx",))


# -- the plain path ------------------------------------------------------------------------------------


def test_without_policy_routes_are_plain_and_policy_makes_them_policed(mesh: Mesh) -> None:
    mesh.http_upstreams("svc", 2)
    assert request(mesh.egress)[0] == 200
    assert mesh.lt.call(mesh.plane.egress_route, "svc").policed is False
    install(mesh, vs("svc", rule(timeout=5.0)))
    assert mesh.lt.call(mesh.plane.egress_route, "svc").policed is True
    assert request(mesh.egress)[0] == 200
    install(mesh, vs("svc", rule()), dr("svc"))  # a table without policies, default limits: plain again
    assert mesh.lt.call(mesh.plane.egress_route, "svc").policed is False
    install(mesh, dr("svc", pool=ConnectionPool(max_requests=10)))
    assert mesh.lt.call(mesh.plane.egress_route, "svc").policed is True
    assert request(mesh.egress)[0] == 200
    assert_released(mesh)


def test_no_rule_matching_is_404_no_route(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 1)
    only = HttpMatch(headers=(("x-canary", StringMatch("exact", "1")),))
    install(mesh, vs("svc", rule(match=(only,), timeout=5.0)))
    status, headers, _ = request(mesh.egress)
    assert status == 404 and headers["x-plexus-error"] == "no_route; service=svc"
    assert request(mesh.egress, headers={"x-canary": "1"})[0] == 200
    assert len(ups[0].received) == 1


# -- fault ------------------------------------------------------------------------------------------


def test_fault_abort_answers_locally_and_the_upstream_sees_nothing(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 1)
    install(mesh, vs("svc", rule(fault=HttpFault(abort_status=418))))
    for _ in range(3):
        status, headers, _ = request(mesh.egress, "/echo", method="POST", body=b"x" * 10)
        assert status == 418 and headers["x-plexus-error"] == "fault_injected; service=svc"
    assert ups[0].received == []
    assert 'reason="fault_injected"' in mesh.lt.call(mesh.plane.metrics_text)


def test_fault_abort_percentage_answers_some(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 1)
    install(mesh, vs("svc", rule(fault=HttpFault(abort_status=503, abort_percent=50.0))))
    statuses = Counter(request(mesh.egress)[0] for _ in range(100))
    assert set(statuses) == {200, 503} and 20 <= statuses[503] <= 80, statuses  # p = 0.5: ±6 sd
    assert len(ups[0].received) == statuses[200]


def test_fault_delay_holds_the_request_then_it_goes_on_with_its_body(mesh: Mesh) -> None:
    ups = mesh.http_upstreams("svc", 1)
    install(mesh, vs("svc", rule(fault=HttpFault(delay=0.4))))
    started = time.monotonic()
    status, _, body = request(mesh.egress, "/echo", method="POST", body=b"held body")
    assert status == 200 and body == b"held body"
    assert time.monotonic() - started >= 0.35  # the delay is the behaviour under test, not a speed
    assert len(ups[0].received) == 1


# -- timeouts ---------------------------------------------------------------------------------------


def test_overall_timeout_is_504_and_covers_the_retries(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"delay": 0.3}, {"delay": 0.3})
    retries = HttpRetry(attempts=5, per_try_timeout=0.2, retry_on=("reset",))
    install(mesh, vs("svc", rule(timeout=0.7, retries=retries)))
    started = time.monotonic()
    status, headers, _ = request(mesh.egress)
    elapsed = time.monotonic() - started
    assert status == 504 and headers["x-plexus-error"] == "upstream_request_timeout; service=svc"
    assert elapsed < 3.0  # bounded by the policy's 0.7 s, not by 6 tries of 0.2 s nor the 5 s default
    tries = sum(len(u.received) for u in ups)
    assert 2 <= tries <= 5, tries
    assert_released(mesh)


def test_policy_timeout_longer_than_the_default_wins(lt: LoopThread) -> None:
    mesh = Mesh(lt, request_timeout=0.4)
    try:
        flaky(mesh, "svc", {"delay": 1.0})
        assert request(mesh.egress)[0] == 504  # the data plane's default, without policy
        install(mesh, vs("svc", rule(timeout=3.0)))
        status, headers, _ = request(mesh.egress)
        assert status == 200, headers
    finally:
        mesh.close()


def test_per_try_timeout_abandons_the_slow_try_and_retries_elsewhere(mesh: Mesh) -> None:
    slow, fast = flaky(mesh, "svc", {"delay": 2.0}, {})
    retries = HttpRetry(attempts=2, per_try_timeout=0.25, retry_on=("reset",))
    install(mesh, vs("svc", rule(retries=retries)))
    answers = [request(mesh.egress) for _ in range(6)]
    assert all(a[0] == 200 and a[1]["x-upstream"] == "svc-1" for a in answers), answers
    assert len(slow.received) >= 2 and len(fast.received) == 6
    assert_released(mesh)


def test_per_try_timeout_without_retries_left_is_504_per_try(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"delay": 2.0}, {"delay": 2.0})
    retries = HttpRetry(attempts=1, per_try_timeout=0.2, retry_on=("reset",))
    install(mesh, vs("svc", rule(retries=retries)))
    status, headers, _ = request(mesh.egress)
    assert status == 504 and headers["x-plexus-error"] == "upstream_per_try_timeout; service=svc"
    assert sum(len(u.received) for u in ups) == 2
    assert_released(mesh)


# -- retries ----------------------------------------------------------------------------------------


def test_retriable_status_is_swallowed_and_retried_on_another_endpoint(mesh: Mesh) -> None:
    bad, good = flaky(mesh, "svc", {"status": 503}, {})
    install(mesh, vs("svc", rule(retries=RETRY_5XX)))
    for i in range(10):
        status, headers, body = request(mesh.egress, "/echo", method="POST", body=b"id-%d" % i)
        assert status == 200 and body == b"id-%d" % i and headers["x-upstream"] == "svc-1"
    assert len(good.received) == 10 and [r.body for r in good.received] == [b"id-%d" % i for i in range(10)]
    assert len(bad.received) >= 3  # round robin sends about half of the first tries there
    assert_released(mesh)


def test_retries_stop_after_attempts_and_the_last_answer_is_forwarded_whole(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"status": 503}, {"status": 503}, {"status": 503})
    install(mesh, vs("svc", rule(retries=RETRY_5XX)))
    status, headers, body = request(mesh.egress)
    assert status == 503 and body.startswith(b"failed by ") and "x-plexus-error" not in headers
    assert sum(len(u.received) for u in ups) == 3  # the first try and 2 retries
    assert_released(mesh)


def test_status_not_in_retry_on_is_not_retried(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"status": 500}, {"status": 500})
    install(mesh, vs("svc", rule(retries=HttpRetry(attempts=3, retry_on=("gateway-error",)))))
    assert request(mesh.egress)[0] == 500
    assert sum(len(u.received) for u in ups) == 1


def test_reset_before_answer_is_retried_for_any_method_only_when_retry_on_says_reset(mesh: Mesh) -> None:
    resetter, _ = flaky(mesh, "svc", {"reset": True}, {})
    install(mesh, vs("svc", rule(retries=HttpRetry(attempts=2, retry_on=("reset",)))))
    for _ in range(4):
        assert request(mesh.egress, "/echo", method="POST", body=b"p")[0] == 200
    assert len(resetter.received) >= 1
    install(mesh, vs("svc", rule(retries=HttpRetry(attempts=2, retry_on=("connect-failure",)))))
    statuses = Counter(request(mesh.egress, "/echo", method="POST", body=b"p")[0] for _ in range(4))
    assert statuses[502] >= 1 and set(statuses) <= {200, 502}, statuses
    assert_released(mesh)


def test_connect_refused_on_one_of_five_hosts_is_invisible_with_a_policy(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {}, {}, {}, {})
    dead = f"127.0.0.1:{closed_port()}"
    mesh.set_instances(
        "svc", [*[f"127.0.0.1:{u.port}" for u in ups[:2]], dead, *[f"127.0.0.1:{u.port}" for u in ups[2:]]]
    )
    install(mesh, vs("svc", rule(timeout=5.0)))  # Istio's default retries: connect-failure among them
    statuses = Counter(request(mesh.egress, "/echo", method="POST", body=b"k")[0] for _ in range(40))
    assert statuses == {200: 40}
    assert sum(len(u.received) for u in ups) == 40
    assert_released(mesh)


def test_a_request_too_big_to_replay_is_not_retried(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"status": 503}, {"status": 503})
    install(mesh, vs("svc", rule(retries=RETRY_5XX)))
    big = b"b" * (RETRY_BUFFER_BYTES + 1)
    status, _, _ = request(mesh.egress, "/echo", method="POST", body=big)
    assert status == 503
    assert sum(len(u.received) for u in ups) == 1
    assert_released(mesh)


def test_retry_budget_bounds_the_extra_load_on_a_failing_upstream(mesh: Mesh) -> None:
    """Upstream 503 on every request: with 20 clients at once and 5 retries allowed each, the budget
    (20 % of requests in flight, at least 3) keeps retries near a fifth of the load; nothing hangs."""
    ups = flaky(mesh, "svc", {"status": 503}, {"status": 503}, {"status": 503})
    install(mesh, vs("svc", rule(retries=HttpRetry(attempts=5, retry_on=("5xx",)))))
    clients, each = 20, 15

    def client() -> Counter[int]:
        got: Counter[int] = Counter()
        for _ in range(each):
            got[request(mesh.egress)[0]] += 1
        return got

    results = in_parallel(clients, client)
    sent = clients * each
    assert sum(results, Counter()) == {503: sent}  # every request answered: nothing lost, nothing hangs
    seen = sum(len(u.received) for u in ups)
    breaker = mesh.lt.call(lambda: cluster(mesh).breaker.view())
    print(
        f"sent={sent} upstream saw={seen} ({seen / sent:.2f}x) budget refusals={breaker['budget_exhausted']}"
    )
    assert seen > sent  # some retries happened
    # Retries in flight ≤ max(3, 20 % of the requests in flight), against 6x without a budget. The extra
    # load tends to 20 % when tries take as long as the time a retry holds its slot (its back-off and its
    # try); here tries are quick and the client shares the GIL with the proxy, so the floor weighs more.
    assert seen <= 1.5 * sent, (seen, sent)
    assert breaker["budget_exhausted"] > 0
    assert_released(mesh)


def test_max_retries_zero_turns_retries_off(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"status": 503}, {"status": 503})
    install(mesh, vs("svc", rule(retries=RETRY_5XX)), dr("svc", pool=ConnectionPool(max_retries=0)))
    assert request(mesh.egress)[0] == 503
    assert sum(len(u.received) for u in ups) == 1
    assert mesh.lt.call(lambda: cluster(mesh).breaker.view())["overflows"]["retries"] == 1


# -- circuit breaking ------------------------------------------------------------------------------


def test_breaker_full_answers_503_overflow_at_once(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"delay": 1.5})
    install(mesh, dr("svc", pool=ConnectionPool(max_requests=2)))
    slow: list[Response] = []
    threads = [threading.Thread(target=lambda: slow.append(request(mesh.egress))) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(ups[0].received) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    status, headers, _ = request(mesh.egress)
    assert status == 503 and headers["x-plexus-error"] == "upstream_overflow; service=svc"
    assert len(slow) == 0  # answered while the two in flight still run: at once, not after them
    for t in threads:
        t.join(10)
    assert [s[0] for s in slow] == [200, 200]
    assert mesh.lt.call(lambda: cluster(mesh).breaker.view())["overflows"]["requests"] == 1
    assert_released(mesh)


def test_max_connections_queues_as_pending_and_max_pending_overflows(mesh: Mesh) -> None:
    (up,) = flaky(mesh, "svc", {"delay": 0.4})
    install(mesh, dr("svc", pool=ConnectionPool(max_connections=1, max_pending=2)))
    assert request(mesh.egress)[0] == 200  # the one connection, idle now (a connect would count as pending)
    results = in_parallel(5, request, mesh.egress)
    statuses = Counter(r[0] for r in results)
    # one in flight on the one connection, two waiting for it, the rest refused at once
    assert statuses == {200: 3, 503: 2}, statuses
    assert all(r[1]["x-plexus-error"] == "upstream_overflow; service=svc" for r in results if r[0] == 503)
    assert up.connections == 1  # never more than one connection
    assert_released(mesh)


def test_max_requests_per_connection_closes_after_that_many(mesh: Mesh) -> None:
    (up,) = flaky(mesh, "svc", {})
    install(mesh, dr("svc", pool=ConnectionPool(max_requests_per_connection=2)))
    for _ in range(6):
        assert request(mesh.egress)[0] == 200
    assert up.connections == 3
    assert_released(mesh)


def test_connect_timeout_from_the_destination_rule(lt: LoopThread) -> None:
    mesh = Mesh(lt, connect_timeout=10.0, request_timeout=20.0)
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepts: once its backlog is full, connects hang
        port = listener.getsockname()[1]
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        mesh.set_instances("svc", [f"127.0.0.1:{port}"])
        install(mesh, dr("svc", pool=ConnectionPool(connect_timeout=0.3)))
        started = time.monotonic()
        status, headers, _ = request(mesh.egress)
        assert status == 503 and headers["x-plexus-error"] == "upstream_connect_failed; service=svc"
        assert time.monotonic() - started < 5.0  # the rule's 0.3 s, not the data plane's 10 s
    finally:
        for s in fillers:
            s.close()
        listener.close()
        mesh.close()


# -- outlier detection ------------------------------------------------------------------------------


def test_one_bad_host_of_ten_is_ejected_after_5_errors_and_comes_back(mesh: Mesh) -> None:
    specs: list[dict[str, Any]] = [{} for _ in range(10)]
    specs[3] = {"status": 500}
    ups = flaky(mesh, "svc", *specs)
    bad = ups[3]
    outlier = OutlierDetection(
        consecutive_errors=5, interval=0.2, base_ejection_time=1.5, max_ejection_percent=10
    )
    install(mesh, dr("svc", outlier=outlier))
    for _ in range(60):  # 6 rounds of round robin: the bad host's 5th error ejects it
        request(mesh.egress)
    assert len(bad.received) == 5
    view = mesh.lt.call(detector, mesh)
    assert view["ejected"] == [f"127.0.0.1:{bad.port}"] and view["ejections_total"] == 1
    before = len(bad.received)
    for _ in range(30):
        assert request(mesh.egress)[0] == 200
    assert len(bad.received) == before  # ejected: no traffic
    time.sleep(2.5)  # the ejection time (1.5 s) and a sweep
    for _ in range(20):
        request(mesh.egress)
    assert len(bad.received) > before  # back
    assert mesh.lt.call(detector, mesh)["unejections_total"] >= 1


def test_ejection_cap_holds(mesh: Mesh) -> None:
    ups = flaky(mesh, "svc", {"status": 503}, {"status": 503}, {}, {}, {})
    outlier = OutlierDetection(
        consecutive_errors=3, interval=5.0, base_ejection_time=30.0, max_ejection_percent=20
    )
    install(mesh, dr("svc", outlier=outlier))
    for _ in range(40):
        request(mesh.egress)
    view = mesh.lt.call(detector, mesh)
    assert len(view["ejected"]) == 1 and view["ejections_overflow"] >= 1  # 20 % of 5 hosts: one at a time
    assert sum(len(u.received) for u in ups) == 40


# -- mirror ----------------------------------------------------------------------------------------


def test_mirror_sends_a_shadow_copy_and_its_answer_is_dropped(mesh: Mesh) -> None:
    (main,) = flaky(mesh, "svc", {})
    (shadow,) = flaky(mesh, "shadow", {"status": 500})
    install(mesh, vs("svc", rule(mirror=Mirror("shadow"))))
    for i in range(5):
        status, headers, body = request(mesh.egress, "/echo", host="svc:8080", method="POST", body=b"m%d" % i)
        assert status == 200 and body == b"m%d" % i and headers["x-upstream"] == "svc-0"
    deadline = time.monotonic() + 5
    while len(shadow.received) < 5:
        assert time.monotonic() < deadline, shadow.received
        time.sleep(0.02)
    assert [r.body for r in shadow.received] == [b"m%d" % i for i in range(5)]
    assert {r.headers["host"] for r in shadow.received} == {"svc-shadow:8080"}
    assert {r.headers["x-plexus-service"] for r in shadow.received} == {"shadow"}
    assert {r.headers["host"] for r in main.received} == {"svc:8080"}


def test_a_failing_or_slow_mirror_never_affects_the_original(mesh: Mesh) -> None:
    flaky(mesh, "svc", {})
    (slow,) = flaky(mesh, "shadow", {"delay": 3.0})
    mesh.set_instances("dead", [f"127.0.0.1:{closed_port()}"])
    install(mesh, vs("svc", rule(mirror=Mirror("dead"))))
    started = time.monotonic()
    assert [request(mesh.egress)[0] for _ in range(5)] == [200] * 5
    install(mesh, vs("svc", rule(mirror=Mirror("shadow"))))
    assert [request(mesh.egress)[0] for _ in range(5)] == [200] * 5
    assert time.monotonic() - started < 2.5  # the shadow's 3 s answers are not waited for
    assert len(slow.received) >= 1


def test_shadow_host_names() -> None:
    assert _shadow_host(b"orders") == b"orders-shadow"
    assert _shadow_host(b"orders:8080") == b"orders-shadow:8080"
    assert _shadow_host(b"[::1]:80") == b"[::1]-shadow:80"


# -- gate and caller -------------------------------------------------------------------------------


def test_ingress_gate_answers_429_when_the_bucket_is_empty(mesh: Mesh) -> None:
    (app,) = flaky(mesh, "app-backend", {})
    mesh.lt.call(mesh.plane.set_local_service, "orders", "http", HostPort("127.0.0.1", app.port))
    limit = RateLimitPolicy(
        name="orders", namespace="default", host="orders", local=(LocalRateLimit("all", 3, 0.01),)
    )
    install(mesh, limit)
    # one keep-alive connection: a refused request leaves the connection fit for the next one
    with socket.create_connection(mesh.ingress, timeout=10) as s:
        answers: list[tuple[int, str | None, bool]] = []
        for _ in range(6):
            s.sendall(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            status, headers, _, closed = read_response(s)
            answers.append((status, headers.get("x-plexus-error"), closed))
    assert answers == [(200, None, False)] * 3 + [(429, "rate_limited; service=orders", False)] * 3
    assert len(app.received) == 3
    install(mesh)  # the policy goes: the ingress route is plain again
    assert request(mesh.ingress, host="orders")[0] == 200


def test_shed_requests_on_shared_keep_alive_connections_get_only_their_answers(mesh: Mesh) -> None:
    (app,) = flaky(mesh, "app-backend", {"delay": 0.1})
    mesh.lt.call(mesh.plane.set_local_service, "orders", "http", HostPort("127.0.0.1", app.port))
    adaptive = AdaptiveLimit(cpu_threshold=None, max_concurrency=4)
    install(mesh, RateLimitPolicy(name="orders", namespace="default", host="orders", adaptive=adaptive))

    def client() -> Counter[tuple[int, str | None]]:
        got: Counter[tuple[int, str | None]] = Counter()
        with socket.create_connection(mesh.ingress, timeout=10) as s:
            for _ in range(10):
                s.sendall(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
                status, headers, _, _ = read_response(s)
                got[(status, headers.get("x-plexus-error"))] += 1
        return got

    answers: Counter[tuple[int, str | None]] = sum(in_parallel(10, client), Counter())
    assert set(answers) <= {(200, None), (503, "load_shed; service=orders")}, answers
    assert answers[(503, "load_shed; service=orders")] > 0 and answers[(200, None)] >= 4, answers


def test_egress_adds_the_caller_header(lt: LoopThread) -> None:
    mesh = Mesh(lt, workload="frontend")
    try:
        (up,) = flaky(mesh, "svc", {})
        assert request(mesh.egress)[0] == 200
        assert up.received[0].headers["x-plexus-caller"] == "frontend"
    finally:
        mesh.close()
    plain = Mesh(lt)
    try:
        (up,) = flaky(plain, "svc", {})
        assert request(plain.egress)[0] == 200
        assert "x-plexus-caller" not in up.received[0].headers
    finally:
        plain.close()
