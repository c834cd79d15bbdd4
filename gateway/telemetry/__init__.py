"""Telemetry: GWE's device_info, usage_report and engine_report, and /metrics for Prometheus."""
