"""A fleet snapshot as the admin API's and the metrics' tests read it: a gateway whose polls
fail for now, held back by the server's Retry-After, an action downloading, feedback waiting, one
feedback dropped (refused for good)."""

from __future__ import annotations

from gateway.fleet.snapshot import FleetSnapshot

#: Failing since 2026-12-07T07:00:00Z, held until 07:10:00Z, the last success at 06:55:00Z.
FAILING_FLEET = FleetSnapshot(
    server="https://hawkbit.example.com", tenant="DEFAULT", controller_id="gw-1", state="held", polls=12,
    failures=3, failures_in_row=2, last_poll_at=1796627100.0, last_poll_outcome="failed",
    last_success_at=1796626500.0, last_error="GET https://hawkbit.example.com/DEFAULT/controller/v1/gw-1: HTTP 429: Too Many Requests",
    last_error_at=1796627100.0, failing_since=1796626800.0, next_poll_in_s=280.0, held_until=1796627400.0,
    server_sleep_s=300.0, action_id="7", action_status="DOWNLOADING", sw_version="1.4.2", feedback_waiting=2,
    feedback_oldest_age_s=303.0, feedback_dropped=1)
