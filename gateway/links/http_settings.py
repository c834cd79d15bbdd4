"""The ``http_links:`` section: cloud links over HTTP (Exosite's device API, or JSON batches).

An HTTP link reads its journal stream like an MQTT link and posts it in batches. Its
routes use the MQTT links' syntax; the cloud topic a route gives is the Exosite alias
(mode ``exosite``) or the ``topic`` field of each JSON record (mode ``json``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from gateway.configdirectory import cannot_be_used, dangling_link, not_a_directory
from gateway.configurl import URLForm, url_problem
from gateway.httpheaders import header_name_problem, header_value_problem
from gateway.links.settings import RouteSettings
from gateway.mqtt.topics import valid_topic
from gateway.pemfiles import ca_file_problem
from gateway.nearestpath import nearest_existing
from gateway.virtualfs import virtual_fs_of

#: Telemetry goes up under the alias it was written as (``telemetry/temp`` -> ``temp``), and
#: the gateway's reports under Gateway Engine's aliases of their names, as GWE sends them.
EXOSITE_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings("telemetry/#", "{#}"),
    RouteSettings("edge/gateway/reports/device_info", "device_info"),
    RouteSettings("edge/gateway/reports/usage_report", "usage_report"),
    RouteSettings("edge/gateway/reports/engine_report", "engine_report"),
)

#: An exosite link's URL is the device API's root: its paths (``/onep:v1/stack/alias``) go after it.
_EXOSITE_URL = URLForm("https://host[:port][/path]", path=True, query=False,
                       goes_after="the device API's paths go after it",
                       authenticates="the link authenticates with its CIK")
#: A json link posts each batch to its URL as it is, a query included.
_JSON_URL = URLForm("https://host[:port][/path][?query]", path=True, query=True,
                    goes_after="each batch is posted to the URL as it is",
                    authenticates="give an Authorization header under headers")


def cik_file_problem(cik_file: str) -> str | None:
    """Why the gateway could not save a CIK at ``cik_file`` (``None`` when it can): the
    platform activates a serial once, so a CIK it cannot keep loses the device at the next
    start. Its directory, or the nearest one that exists (the others are made), must be one
    the process may write in, as it runs now: under the .deb's unit (``ProtectSystem=full``),
    ``/etc`` is read-only but for ``/etc/gateway/conf.d``; and not on one of the kernel's virtual
    file systems (``/proc``, ``/sys``: root passes the writability check there).

    :param cik_file: the path the link writes (a configured relative one is taken from the state
        directory: :func:`gateway.links.cikplace.cik_path`).
    """
    found = nearest_existing(Path(cik_file).parent, _stat_or_unusable)
    if found is None:
        return (f"the gateway cannot look at {Path(cik_file).parent} or the directories above it, so the CIK"
                " activated for this link (once per serial) could not be saved")
    directory, stats = found
    if isinstance(stats, str):
        return f"{stats}: the CIK activated for this link (once per serial) could not be saved"
    virtual = virtual_fs_of(stats.st_dev)
    if virtual is not None:
        # (root may write in /proc and /sys, and nothing written there is kept)
        return (f"{directory} is on {virtual[0]} (mounted on {virtual[1]}), one of the kernel's virtual file"
                " systems, which keeps no file: the CIK activated for this link (once per serial) could not"
                " be saved: leave cik_file out (<state_dir>/links/<name>.cik) or name a file under the state"
                " directory")
    if not stat.S_ISDIR(stats.st_mode):
        return f"{not_a_directory(directory)}: the CIK activated for this link (once per serial) could not be saved"
    if not os.access(directory, os.W_OK | os.X_OK):
        return (f"the gateway cannot write in {directory}, so the CIK activated for this link (once"
                " per serial) could not be saved: leave cik_file out (<state_dir>/links/<name>.cik)"
                " or name a file under the state directory")
    return None


def _stat_or_unusable(path: Path) -> os.stat_result | str:
    """``os.stat(path)``; for a path no directory can be made at (under a loop of symbolic links,
    under a file, a name too long: ELOOP, ENOTDIR, ENAMETOOLONG; a symbolic link to nothing), why,
    in the words of the directory keys (:mod:`gateway.configdirectory`). :meth:`pathlib.Path.exists` took such a
    path as absent, so the check looked at the directory above, and a loop passed."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        dangling = dangling_link(path)
        if dangling is None:
            raise  # (not there yet: made when the CIK is saved)
        return dangling
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG):
            return cannot_be_used(path, exc)
        raise


@dataclass(frozen=True)
class AliasDownlinkSettings:
    """An alias the link long-polls in the cloud; each new value is published locally.

    The local topic takes ``{alias}``, ``{device}`` and ``{tenant}``; the default is a Hono
    one-way command (empty request id) named for the alias to the gateway's own device id,
    which the gateway's command dispatcher runs: an alias named like one of its commands
    (``report``, ``app.restart``, ``install``...). The default alias, ``command``, is kept for
    configurations written when it was the example; with the default topic it reaches the
    dispatcher as an unknown command (a 404 in the log for every value), so the docs tell to
    name the alias, or give a topic an app subscribes to.
    """

    alias: str = field(default="command", metadata={"doc": "cloud alias to long-poll"})
    topic: str = field(default="command//{device}/req//{alias}", metadata={"doc": "local topic template"})
    qos: int = field(default=1, metadata={"min": 0, "max": 1, "doc": "local publish QoS"})

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The alias is not empty; the topic template takes only its placeholders and gives a topic name."""
        if not self.alias:
            yield ("alias",), "must not be empty: the cloud alias to long-poll"
        unknown = [name for name in re.findall(r"\{([^{}]*)\}", self.topic)
                   if name not in ("alias", "device", "tenant")]
        for name in unknown:
            yield ("topic",), f"unknown placeholder {{{name}}} (known: alias, device, tenant)"
        if not unknown and not valid_topic(re.sub(r"\{[^{}]*\}", "x", self.topic)):
            yield ("topic",), f"not a valid topic name: {self.topic!r}"


@dataclass(frozen=True)
class HTTPLinkSettings:
    """One HTTP cloud link.

    :ivar url: ``exosite``: the device API's base URL (``https://<product id>.m2.exosite.io``);
        ``json``: the URL each batch is POSTed to.
    """

    mode: Literal["exosite", "json"] = field(default="exosite", metadata={"doc": "exosite | json"})
    url: str = field(default="https://localhost", metadata={"doc": "base URL (exosite) or POST URL (json)"})
    vendor: str = field(default="", metadata={"doc": "exosite: vendor (product id) for activation"})
    model: str = field(default="", metadata={"doc": "exosite: model for activation"})
    serial: str = field(default="{device}", metadata={"doc": "exosite: serial number ({device} allowed)"})
    cik_file: str = field(default="", metadata={
        "path": True, "empty_is_default": True,
        "doc": "exosite: where the CIK is kept (mode 0600); default <state_dir>/links/<name>.cik"})
    headers: dict[str, str] = field(default_factory=dict, metadata={"doc": "json: extra request headers"})
    ca_file: str | None = field(default=None, metadata={
        "path": True, "doc": "CA certificates (PEM); system CAs when unset"})
    batch_records: int = field(default=100, metadata={"min": 1, "max": 100000, "doc": "records per batch"})
    batch_bytes: int = field(default=262144, metadata={"min": 1, "doc": "payload bytes per batch"})
    batch_wait: float = field(default=1.0, metadata={
        "min": 0.0, "max": 3600.0, "doc": "seconds to gather new data into a batch"})
    min_interval: float = field(default=1.0, metadata={
        "min": 0.0, "max": 3600.0, "doc": "seconds between requests (Exosite: one a second per device)"})
    request_timeout: float = field(default=30.0, metadata={"min": 0.1, "doc": "seconds per request"})
    backoff_initial: float = field(default=1.0, metadata={"min": 0.01, "doc": "first retry delay ceiling (s)"})
    backoff_factor: float = field(default=2.0, metadata={"min": 1.0, "doc": "delay growth per attempt"})
    backoff_max: float = field(default=300.0, metadata={"min": 0.01, "doc": "longest retry delay (s)"})
    routes: tuple[RouteSettings, ...] = field(default=EXOSITE_ROUTES, metadata={"doc": "local -> cloud"})
    downlink: tuple[AliasDownlinkSettings, ...] = field(default=(), metadata={
        "doc": "exosite: aliases long-polled and published locally"})
    poll_timeout_ms: int = field(default=30000, metadata={
        "min": 1000, "max": 300000, "doc": "exosite: Request-Timeout of each long-poll (ms)"})
    loss_topic: str | None = field(default=None, metadata={
        "doc": "cloud topic (exosite: alias) for journal loss reports (none: off)"})

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """What the link would stumble on at start: its URL, its CA file (read and parsed now,
        as the link's HTTP client reads it), a ``cik_file`` it could not save the CIK in,
        retry delays that depend on each other, a key of the other mode (a json link's
        ``downlink``, an exosite link's ``headers``), one header named twice, a header that
        frames the body, which the HTTP client writes itself, and a header name or value no
        request can carry (:mod:`gateway.httpheaders`)."""
        problem = url_problem(self.url, _EXOSITE_URL if self.mode == "exosite" else _JSON_URL, allow_http=True)
        if problem is not None:
            yield ("url",), problem
        problem = ca_file_problem(self.ca_file) if self.ca_file is not None else None
        if problem is not None:
            yield ("ca_file",), problem
        # (a relative one is under the state directory, as the link takes it: checked with it, in
        # gateway.config)
        problem = (cik_file_problem(self.cik_file) if self.mode == "exosite" and Path(self.cik_file).is_absolute()
                   else None)
        if problem is not None:
            yield ("cik_file",), problem
        if self.backoff_max < self.backoff_initial:
            yield ("backoff_max",), f"must be at least backoff_initial ({self.backoff_initial})"
        # (each would be ignored: a json link's commands would never come, an exosite link's
        # headers never go)
        if self.mode == "json" and self.downlink:
            yield ("downlink",), "a json link long-polls nothing: only mode: exosite has a downlink"
        if self.mode == "exosite" and self.headers:
            yield ("headers",), "an exosite link sends no extra headers: only mode: json does"
        seen: dict[str, str] = {}
        for name in self.headers:  # (HTTP header names are case-insensitive: both would go)
            if name.lower() in seen:
                yield ("headers", name), f"names the header {seen[name.lower()]!r} names again (case does not count)"
            seen.setdefault(name.lower(), name)
            if name.lower() in ("content-length", "transfer-encoding"):  # (Twisted writes its own: two would go)
                yield ("headers", name), "the gateway sets it from each batch's body: it is no header to configure"
            problem = header_name_problem(name) or header_value_problem(self.headers[name])
            if problem is not None:
                yield ("headers", name), problem


@dataclass(frozen=True)
class HTTPLinksSettings:
    """The ``http_links:`` section: named HTTP cloud links (none by default)."""

    links: dict[str, HTTPLinkSettings] = field(default_factory=dict, metadata={"doc": "HTTP links by name"})
