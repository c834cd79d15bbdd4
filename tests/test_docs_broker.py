"""docs/broker.md's promises about the ``broker:`` keys, read from the page itself: the
durations ``persistent_client_expiration`` takes, the ranges its table gives, the amqtt keys it
says are ignored, refused or replaced; and a configuration made of the table's keys, at their
documented defaults, with the ignored keys beside them, passes a real ``--check-config``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.settings import BrokerSettings, parse_broker_section
from gateway.config import ErrorList

PAGE = Path(__file__).resolve().parent.parent / "docs" / "broker.md"
TWISTD = str(Path(sys.executable).parent / "twistd")
#: Lets anonymous clients in, so that no check here is about authentication.
ANONYMOUS = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}


def table() -> dict[str, tuple[str, str]]:
    """The page's key table: key -> (default as written, meaning)."""
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (.*) \|$", PAGE.read_text(), re.M)
    return {key: (default, meaning) for key, default, meaning in rows}


def ignored_keys() -> list[str]:
    """The keys of the page's sentence "Keys amqtt accepts that the broker ignores: ...", up to
    the sentence after it (amqtt's ``max-qos``)."""
    text = " ".join(PAGE.read_text().split())
    found = re.search(r"Keys amqtt accepts that the broker ignores: (.*?)amqtt's `max-qos`", text)
    assert found is not None, "broker.md no longer lists the ignored amqtt keys"
    return [key for key in re.findall(r"`(\w+)`", found.group(1))
            if key not in ("cafile", "BrokerSysPlugin")]  # (named as what to use instead)


def parse(**keys: Any) -> tuple[BrokerSettings, list[str]]:
    """The ``broker:`` section of ``keys`` (anonymous clients let in), and its error lines."""
    errors = ErrorList()
    settings = parse_broker_section({"plugins": ANONYMOUS, **keys}, errors)
    return settings, errors.lines


class BrokerKeysTests(SynchronousTestCase):
    """What the page's table and its section "What remains of amqtt" say of the keys."""

    def test_every_duration_form_the_table_names(self) -> None:
        """``persistent_client_expiration``: seconds, ``<n>h``, ``d``, ``w``, ``m`` (30 days),
        ``y`` (365 days), ``<n>s``, and ``0`` for no expiry; the default ``7d``."""
        default, meaning = table()["persistent_client_expiration"]
        for form in ("`<n>h`", "`d`", "`w`", "`m` (30 days)", "`y` (365 days)", "`<n>s`", "`0`: no expiry"):
            self.assertIn(form, meaning)
        day = 86400
        for value, seconds in ((default, 7 * day), (90, 90), ("3h", 3 * 3600), ("2d", 2 * day), ("1w", 7 * day),
                               ("1m", 30 * day), ("1y", 365 * day), ("45s", 45), (0, 0)):
            settings, errors = parse(persistent_client_expiration=value)
            self.assertEqual((errors, settings.persistent_client_expiration), ([], seconds), value)

    def test_the_forms_both_pages_refuse(self) -> None:
        """broker.md and configuration.md name the same forms (configuration.md did not name
        ``<n>s``, which the parser takes), and the ones they say are refused are: a quoted number,
        an upper-case unit, a space, a fraction with a unit; fractions of seconds are taken."""
        config_md = PAGE.with_name("configuration.md").read_text()
        [row] = [line for line in config_md.splitlines() if line.startswith("| `persistent_client_expiration` |")]
        forms = ("`<n>h`", "`d`", "`w`", "`m` (30 days)", "`y` (365 days)", "`<n>s`", "`0`: no expiry",
                 "a quoted `\"90\"` is refused", "`7D`, `7 d`, `1.5h` are refused")
        for meaning in (row, table()["persistent_client_expiration"][1]):
            for form in forms:
                self.assertIn(form, meaning)
        for value in ("90", "7D", "7 d", "1.5h", "-1h", "+1h", "h"):
            self.assertEqual(len(parse(persistent_client_expiration=value)[1]), 1, value)
        self.assertEqual(parse(persistent_client_expiration=1.5)[0].persistent_client_expiration, 1.5)

    def test_amqtts_session_expiry_interval_only_when_the_key_is_absent(self) -> None:
        self.assertIn("amqtt's `session_expiry_interval` (seconds) is used when this key is absent",
                      table()["persistent_client_expiration"][1])
        self.assertEqual(parse(session_expiry_interval=600)[0].persistent_client_expiration, 600)
        self.assertEqual(parse(session_expiry_interval=600, persistent_client_expiration="1h")[0]
                         .persistent_client_expiration, 3600)

    def test_the_ranges_the_table_gives(self) -> None:
        """``max_topic_levels`` from 0 to 32768; ``0`` is no limit for it, for
        ``max_subscriptions``, ``max_inflight_bytes`` and the two bounds on retained messages;
        both overflow policies."""
        rows = table()
        self.assertIn("from `0` to `32768`", rows["max_topic_levels"][1])
        for key in ("max_topic_levels", "max_subscriptions", "max_inflight_bytes", "max_retained_messages",
                    "max_retained_bytes"):
            self.assertRegex(rows[key][1], r"`0`: (any|no limit)")
        for keys in ({"max_topic_levels": 0}, {"max_topic_levels": 32768}, {"max_subscriptions": 0},
                     {"max_inflight_bytes": 0}, {"queue_overflow": "drop_new"}, {"queue_overflow": "drop_oldest"},
                     {"max_retained_messages": 0}, {"max_retained_bytes": 0}):
            settings, errors = parse(**keys)
            key, value = next(iter(keys.items()))
            self.assertEqual((errors, getattr(settings, key)), ([], value))
        self.assertEqual(parse(max_topic_levels=32769)[1],
                         ["<defaults>: broker.max_topic_levels: must be a whole number from 0 to 32768, not 32769"])

    def test_max_topic_levels_below_the_gateways_own_topics_is_refused(self) -> None:
        """``max_topic_levels`` from 1 to 5 is refused, naming the minimum: a command's reply
        (``command//<device>/res/<req-id>/<status>``) has 6 levels, and an app's reply closed its
        connection (``edge/gateway/reports/request`` too under 4); 6 is taken. It was accepted."""
        self.assertEqual(parse(max_topic_levels=4)[1],
                         ["<defaults>: broker.max_topic_levels: must be 0 (any) or at least 6, the levels of the"
                          " gateway's own topics (a command's reply, command//<device>/res/<req-id>/<status>, has 6),"
                          " not 4"])
        self.assertEqual(parse(max_topic_levels=1)[1][0][-6:], " not 1")
        settings, errors = parse(max_topic_levels=6)
        self.assertEqual((errors, settings.max_topic_levels), ([], 6))
        self.assertIn("`1` to `5` are refused", table()["max_topic_levels"][1])

    def test_the_ignored_keys_are_accepted_and_not_used(self) -> None:
        """The broker keys and listener keys the page says are ignored pass the check (a
        ``capath`` that does not exist among them, which amqtt's own check would refuse)."""
        keys = ignored_keys()
        self.assertEqual(keys, ["timeout_disconnect_delay", "sys_interval", "capath", "cadata", "reader", "writer"])
        listener = {"type": "tcp", "bind": "127.0.0.1:0", "capath": "/nonexistent/ca", "cadata": "x",
                    "reader": {}, "writer": {}}
        settings, errors = parse(timeout_disconnect_delay=5, sys_interval=10, listeners={"default": listener})
        self.assertEqual(errors, [])
        self.assertEqual(settings.listeners[0].endpoint, "tcp:0:interface=127.0.0.1")
        self.assertIsNone(settings.listeners[0].cafile)

    def test_max_qos_and_external_listeners_are_refused(self) -> None:
        """amqtt's ``max-qos`` (refused by amqtt's own check) is an unknown key and a listener
        of ``type: external`` a configuration error, as the page says."""
        self.assertIn("amqtt's `max-qos` is an unknown key, refused (`broker.max-qos: unknown key (known: ...)`)",
                      " ".join(PAGE.read_text().split()))
        [line] = parse(**{"max-qos": 1})[1]
        self.assertTrue(line.startswith("<defaults>: broker.max-qos: unknown key (known: auth, connect_timeout,"),
                        line)
        [line] = parse(listeners={"default": {"type": "external"}})[1]
        self.assertTrue(line.startswith("<defaults>: broker.listeners.default.type: external"), line)

    def test_an_auth_section_without_allow_anonymous_refuses_anonymous_clients(self) -> None:
        """``auth: {}`` refuses anonymous clients where amqtt lets them in."""
        errors = ErrorList()
        settings = parse_broker_section({"auth": {}}, errors)
        self.assertEqual((errors.lines, settings.amqtt["auth"]["allow-anonymous"]), ([], False))


class CheckConfigTests(TestCase):
    """A real ``twistd gateway --check-config`` of the page's keys."""

    @inlineCallbacks
    def test_the_tables_defaults_and_the_ignored_keys_pass(self) -> None:
        """Every key of the table at its documented default, written as the page writes it
        (``7d``), with the ignored keys beside them: configuration OK, exit 0 (about 0.5 s)."""
        broker: dict[str, Any] = {key: yaml.safe_load(default) for key, (default, _) in table().items()}
        broker.update(timeout_disconnect_delay=5, sys_interval=10, plugins=ANONYMOUS, listeners={"default": {
            "type": "tcp", "bind": "127.0.0.1:0", "capath": "/nonexistent/ca", "cadata": "x"}})
        config = Path(self.mktemp())
        config.write_text(yaml.safe_dump({"broker": broker, "ingest": {"enabled": False}}))
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, [TWISTD, "gateway", "--config", str(config), "--check-config"], env=os.environ.copy(),
            reactor=reactor).addTimeout(30, reactor)
        self.assertEqual((out + err, code), (f"gateway: configuration OK: {config}\n".encode(), 0))
