-- wrk script for bench/http1.py: print one machine-readable line with counts and exact latency percentiles (µs).
-- wrk's own --latency text rounds to two digits and has no p99.9.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "p999_us": %.1f, ' ..
    '"mean_us": %.2f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency:percentile(99.9),
    latency.mean, latency.max))
end
