"""Hosted applications: install packages, supervise programs, rotate their logs, roll back.

See docs/apps.md; the service is :class:`gateway.apps.service.AppsService`.
"""
