"""On a failed sidecar test, print the logs of the processes it ran (pytest shows them with the failure)."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
from sidecar_helpers import ACTIVE


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if request.node.stash.get(_FAILED, False):
        for group in ACTIVE:
            print(group.logs())
    # forget groups that are over (a module's group lives on until its last test)
    ACTIVE[:] = [g for g in ACTIVE if any(p.alive() for p in g.started)]
