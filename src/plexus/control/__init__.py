"""The control plane: policy resources, per-sidecar snapshots pushed with ACK/NACK, the global rate-limit
token service, stress tests; embeds the registry by default (one process per machine)."""
