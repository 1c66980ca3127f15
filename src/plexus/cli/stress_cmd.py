"""`plexus stress-test`: the single-machine stress test, run by the control plane (plexus.control.stress).

The control plane steers a rising share of SERVICE's real traffic onto the instance published as ADDRESS,
one step at a time, and stops at the first step whose p99 or error rate crosses its limit (or at the maximum
share). This command prints a line per step and the rate the instance held within the limits. Interrupting it
(Ctrl-C) cancels the test; the control plane restores normal routing either way.

Exit codes: 0 the test ran (whichever way it stopped); 1 refused (unknown or unmeshed instance, bad limits, a
test of the service already running) or failed; 2 bad usage; 3 the control plane cannot be reached;
130 interrupted.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, NoReturn

import typer

DEFAULT_CONTROL: Final = "127.0.0.1:15400"  # as plexus.clients.control.DEFAULT_CONTROL
CONTROL_ENV: Final = "PLEXUS_CONTROL"
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130
DEADLINE_MARGIN: Final = 60.0  # seconds per step beyond step_seconds: pushes, ACKs and reports of a busy mesh
# grpc's message for an exception a servicer raised: "Unexpected <class 'pkg.Error'>: text" — show the text.
_UNEXPECTED = re.compile(r"^Unexpected <class '[\w.]+'>: ")


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _steps(start: float, step: float, top: float) -> int:
    return max(1, math.ceil(max(top - start, 0.0) / step - 1e-9) + 1)


def _line(progress: Any) -> str:
    return (
        f"share {progress.share * 100:5.1f}%  rate {progress.rate:9.1f}/s  "
        f"p99 {progress.p99_ms:8.1f} ms  errors {progress.error_rate * 100:6.2f}%"
    )


def stress_test(
    service: Annotated[str, typer.Argument(help="the service whose traffic is steered")],
    instance: Annotated[
        str, typer.Option("--instance", metavar="ADDRESS", help="the instance's published HOST:PORT")
    ],
    max_p99: Annotated[float, typer.Option("--max-p99", metavar="MS", help="p99 limit in milliseconds")],
    max_error_rate: Annotated[
        float, typer.Option("--max-error-rate", metavar="R", help="error-rate limit, 0..1")
    ],
    step_seconds: Annotated[float, typer.Option(help="how long each step lasts")] = 10.0,
    start_share: Annotated[float, typer.Option(help="share of the traffic at the first step, 0..1")] = 0.1,
    step_share: Annotated[float, typer.Option(help="added at every step")] = 0.1,
    max_share: Annotated[float, typer.Option(help="stop after this share even when the limits hold")] = 1.0,
    control: Annotated[
        str,
        typer.Option(
            "--control", envvar=CONTROL_ENV, metavar="HOST:PORT", help=f"control plane [env: {CONTROL_ENV}]"
        ),
    ] = DEFAULT_CONTROL,
) -> None:
    """Concentrate a rising share of SERVICE's traffic on one instance until its latency or error rate
    crosses a limit; print each step and the rate it held."""
    import grpc

    from plexus.core.address import parse_host_port
    from plexus.core.errors import ValidationError
    from plexus.proto import control_pb2 as pb
    from plexus.proto import control_pb2_grpc as pb_grpc

    try:
        parse_host_port(control, "control")
    except ValidationError as exc:
        _fail(f"--control {control!r}: {exc}", EXIT_USAGE)
    for name, value in (
        ("--start-share", start_share),
        ("--step-share", step_share),
        ("--max-share", max_share),
    ):
        if not 0.0 < value <= 1.0:
            _fail(f"{name}: must be in (0, 1], not {value:g}", EXIT_USAGE)
    if not max_p99 > 0:
        _fail(f"--max-p99: must be a positive number of milliseconds, not {max_p99:g}", EXIT_USAGE)
    if not 0.0 <= max_error_rate <= 1.0:
        _fail(f"--max-error-rate: must be in 0..1, not {max_error_rate:g}", EXIT_USAGE)
    if step_seconds <= 0:
        _fail(f"--step-seconds: must be positive, not {step_seconds:g}", EXIT_USAGE)
    request = pb.StressTestRequest(
        service=service,
        instance=instance,
        max_p99_ms=max_p99,
        max_error_rate=max_error_rate,
        step_seconds=step_seconds,
        start_share=start_share,
        step_share=step_share,
        max_share=max_share,
    )
    deadline = _steps(start_share, step_share, max_share) * (step_seconds + DEADLINE_MARGIN)
    typer.echo(
        f"stress test of {service} on {instance}: limits p99 {max_p99:g} ms, error rate {max_error_rate:g}; "
        f"{step_seconds:g} s per step"
    )
    with grpc.insecure_channel(control) as channel:
        stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
        call = stub.StressTest(request, timeout=deadline)
        last: Any = None
        try:
            for progress in call:
                typer.echo(_line(progress))
                last = progress
        except KeyboardInterrupt:
            call.cancel()
            typer.echo("interrupted: the control plane restores normal routing", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = _UNEXPECTED.sub("", str(exc.details()) if isinstance(exc, grpc.Call) else str(exc))
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                _fail(
                    f"cannot run a stress test at {control} ({details}); is `plexus control` running there? "
                    f"(--control HOST:PORT or {CONTROL_ENV})",
                    EXIT_UNAVAILABLE,
                )
            _fail(f"stress test refused or failed: {details}", EXIT_REFUSED)
    if last is None or not last.done:
        _fail("the control plane ended the stress test without a result", EXIT_REFUSED)
    typer.echo(f"stopped: {last.stopped_because}")
    typer.echo(f"held rate: {last.held_rate:.1f} requests/s within the limits")


def register(app: typer.Typer) -> None:
    """Add `plexus stress-test` to the CLI."""
    app.command(name="stress-test")(stress_test)
