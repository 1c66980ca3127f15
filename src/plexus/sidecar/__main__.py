"""``python -m plexus.sidecar``: the serving process that ``plexus sidecar`` execs into (same PID).

``plexus sidecar`` validates the settings (pydantic, YAML, the CLI stack) and then replaces itself with
this entry point, passing the resolved settings as JSON in ``PLEXUS_SIDECAR_RESOLVED``. This process never
loads typer, click, rich, pydantic or PyYAML: they would stay mapped for the sidecar's whole life for nothing.
It is not meant to be started by hand: without resolved settings it refuses and points at ``plexus sidecar``.
"""

from __future__ import annotations

import os
import sys
from typing import Final

from plexus.config.sidecar_settings import RESOLVED_ENV, ResolvedSettings, SettingsDecodeError

EXIT_BAD_CONFIG: Final = 2  # as ``plexus sidecar`` exits for a configuration it refuses


def main() -> int:
    text = os.environ.pop(RESOLVED_ENV, None)  # not inherited by anything this process may start
    if not text:
        print(
            f"python -m plexus.sidecar: no resolved settings ({RESOLVED_ENV} is not set); "
            "start a sidecar with `plexus sidecar`, which validates its flags, environment and --config",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    try:
        resolved = ResolvedSettings.from_json(text)
    except SettingsDecodeError as exc:
        print(
            f"python -m plexus.sidecar: {RESOLVED_ENV} is not valid resolved settings: {exc}; "
            "start a sidecar with `plexus sidecar`",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    from plexus.sidecar.app import run_sidecar  # after the check: a refusal need not load the data plane

    return run_sidecar(resolved)


if __name__ == "__main__":
    sys.exit(main())
