"""``plexus demo --duration N`` carries HTTP, gRPC and Bolt: every path of the table shows successes only."""

from __future__ import annotations

import os
import re
import subprocess
import sys

# The paths the demo's seven processes make: both consumers call HTTP and gRPC on both providers; the meshed
# consumer calls Bolt on both through its sidecar.
EXPECTED = [(protocol, f"{a} → {b}") for protocol in ("http", "grpc")
            for a in ("mesh", "direct") for b in ("mesh", "direct")]
EXPECTED += [("bolt", "mesh → mesh"), ("bolt", "mesh → direct")]


def test_every_protocol_path_succeeds() -> None:
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "plexus", "demo", "--duration", "5", "--rate", "30"],
                          capture_output=True, text=True, timeout=90, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    final = output[output.rindex("final"):]
    for protocol, path in EXPECTED:
        row = re.search(rf"│ {protocol}\s+│ {path}\s+│\s+(\d+) │\s+(\d+) │\s+(\d+) │", final)
        assert row is not None, (protocol, path, final)
        calls, ok, errors = (int(x) for x in row.groups())
        assert calls > 0 and ok == calls and errors == 0, (protocol, path, row.group(0))
    assert "failed 0, misdelivered 0, lost 0" in final, final
