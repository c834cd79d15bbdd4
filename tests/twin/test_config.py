"""The twin: and aws: configuration: checks at load, each with its key."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.errors import ConfigError
from gateway.links.settings import AWS_ROUTES, KANTO_ROUTES


class TwinConfigTests(SynchronousTestCase):
    def load(self, text: str) -> gateway_config.Config:
        path = Path(self.mktemp())
        path.write_text("telemetry:\n  metrics_endpoint: ''\n" + text)
        return gateway_config.load(path)

    def errors(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            self.load(text)
        return "\n".join(caught.exception.args[0] if isinstance(caught.exception.args[0], list)
                         else map(str, caught.exception.args))

    def test_defaults(self) -> None:
        """The twin is on, with no shadow sync; a link without aws: keeps the Kanto/Hono routes."""
        config = self.load("links:\n  links:\n    hono: {endpoint: 'tcp:host=h:port=1'}\n")
        self.assertTrue(config.twin.enabled)
        self.assertIsNone(config.twin.shadow_link)
        self.assertEqual(config.links.links["hono"].routes, KANTO_ROUTES)

    def test_aws_link_gets_kanto_aws_routes(self) -> None:
        """With aws: and no routes, topics go up as they are; given routes are kept."""
        config = self.load("links:\n  links:\n    aws: {endpoint: 'tcp:host=h:port=1', aws: {}}\n"
                           "    mine: {endpoint: 'tcp:host=h:port=1', aws: {},"
                           " routes: [{filter: 'telemetry/#', topic: 'x/{#}'}]}\n")
        self.assertEqual(config.links.links["aws"].routes, AWS_ROUTES)
        self.assertEqual(config.links.links["mine"].routes[0].topic, "x/{#}")

    def test_command_topics_must_not_take_in_the_twins_own_answers(self) -> None:
        """A command_topics filter matching a topic the twin answers on (command///req//...,
        command//<thing>/req//...) is refused at load, naming the filter and one such topic:
        the twin would take its own responses for commands (a delete-response is a delete
        again); filters beside them are fine."""
        cases = {"command/#": "command///req//created", "#": "command///req//created",
                 "+/#": "command///req//created", "command//+/req/#": "command///req//created",
                 "command//acme:gw1:lamp/req//+": "command//acme:gw1:lamp/req//created",
                 "+/+/+/+/+/modify-response": "command///req//modify-response"}
        for topic_filter, own in cases.items():
            message = self.errors(f"twin:\n  command_topics: [e/#, '{topic_filter}']\n")
            self.assertEqual(message.split(": ", 1)[1],
                             f"twin.command_topics.1: {topic_filter!r} matches {own}, where the twin answers: its "
                             "own answers would come back to it as commands")
        config = self.load("twin:\n  command_topics: [e/#, 'command//+/req/cmd-1/+', 'command//+/res/#', 'c/#']\n")
        self.assertEqual(len(config.twin.command_topics), 4)

    def test_shadow_link_must_be_an_mqtt_link(self) -> None:
        """twin.shadow_link naming no MQTT link is refused at load, with the known links."""
        message = self.errors("links:\n  links:\n    aws: {endpoint: 'tcp:host=h:port=1'}\n"
                              "twin:\n  shadow_link: nope\n")
        self.assertIn("twin.shadow_link: no MQTT link 'nope' in links.links (aws)", message)

    def test_shadow_stream_settings_allowed(self) -> None:
        """The sync's journal stream shadow-<link> may have its own journal settings."""
        config = self.load("links:\n  links:\n    aws: {endpoint: 'tcp:host=h:port=1'}\n"
                           "twin:\n  shadow_link: aws\n"
                           "journal:\n  streams:\n    shadow-aws: {}\n")
        self.assertEqual(config.twin.shadow_link, "aws")

    def test_aws_option_problems(self) -> None:
        """alpn with websocket, websocket without credentials, a bad thing id: each named."""
        message = self.errors("links:\n  links:\n    aws:\n      endpoint: 'tls:host=a.iot.eu-west-1.amazonaws.com:port=443'\n"
                              "      aws: {alpn: true, websocket: true}\n"
                              "twin:\n  thing_id: nocolon\n")
        self.assertIn("links.links.aws.aws.alpn: ALPN is for MQTT over TLS", message)
        self.assertIn("links.links.aws.aws.credentials_file: websocket: true signs its URL", message)
        self.assertIn("twin.thing_id: a thing id is namespace:name", message)

    def test_websocket_credentials_read_at_load(self) -> None:
        """An unreadable credentials file or an unknown region is an endpoint error at load."""
        message = self.errors("links:\n  links:\n    aws:\n      endpoint: 'tls:host=example.com:port=443'\n"
                              "      aws: {websocket: true, credentials_file: /nonexistent/creds}\n")
        self.assertIn("links.links.aws.endpoint: aws.region: cannot be read from 'example.com'", message)
        message = self.errors("links:\n  links:\n    aws:\n      endpoint: 'tls:host=example.com:port=443'\n"
                              "      aws: {websocket: true, region: eu-west-1, credentials_file: /nonexistent/creds}\n")
        self.assertIn("links.links.aws.endpoint: aws.credentials_file: /nonexistent/creds: No such file", message)

    def test_aws_link_refuses_qos_2(self) -> None:
        """AWS IoT Core does not support QoS 2 (AWS IoT differences from MQTT: no SUBACK for a
        QoS 2 subscription): an aws: link with a downlink or a will at QoS 2 is refused at load,
        naming the key, instead of a link whose SUBSCRIBE is never answered. Other links keep QoS 2."""
        link = ("links:\n  links:\n    aws:\n      endpoint: 'tcp:host=h:port=1'\n      aws: {}\n"
                "      will_topic: 'e/{device}/gone'\n      will_qos: 2\n"
                "      downlink: [{filter: 'command//+/req/#', qos: 1}, {filter: 'x/#', qos: 2}]\n")
        message = self.errors(link)
        self.assertIn("links.links.aws.will_qos: AWS IoT Core does not support QoS 2: use 0 or 1", message)
        self.assertIn("links.links.aws.downlink.1.qos: AWS IoT Core does not support QoS 2: use 0 or 1", message)
        self.assertNotIn("downlink.0", message)
        config = self.load(link.replace("      aws: {}\n", ""))
        self.assertEqual(config.links.links["aws"].will_qos, 2)

    def test_websocket_without_credentials_is_one_clear_error(self) -> None:
        """websocket: true without credentials_file is named once, at aws.credentials_file; the
        endpoint that cannot be built without them adds no second, nameless error."""
        message = self.errors("links:\n  links:\n    aws:\n      endpoint: 'tls:host=a.iot.eu-west-1.amazonaws.com:port=443'\n"
                              "      aws: {websocket: true}\n")
        self.assertEqual(message.count("\n"), 0, message)
        self.assertIn("links.links.aws.aws.credentials_file: websocket: true signs its URL", message)

    def test_thing_id_needs_a_name_fit_for_topics(self) -> None:
        """A thing id is namespace:name: one with no name ('acme:') is refused at load (every
        command for it names no thing), as is one with an MQTT wildcard (its children's
        events and responses go on topics that carry it, and could not be published)."""
        for thing_id in ("acme:", "acme:g#w", "acme:g+w"):
            message = self.errors(f"twin:\n  thing_id: '{thing_id}'\n")
            self.assertIn("twin.thing_id: a thing id is namespace:name", message)
        self.assertEqual(self.load("twin:\n  thing_id: 'acme:gw:1'\n").twin.thing_id, "acme:gw:1")

    def test_aws_thing_must_fit_in_shadow_topics(self) -> None:
        """The AWS thing (shadow_thing, or the shadow link's client id) is a level of every
        shadow topic: one with '/', '+', '#' or NUL is refused at load (a wildcard in a PUBLISH
        makes the broker close the link's connection, at every reconnect)."""
        link = "links:\n  links:\n    aws: {endpoint: 'tcp:host=h:port=1', client_id: '%s'}\n"
        message = self.errors(link % "{device}" + "twin:\n  shadow_link: aws\n  shadow_thing: 'gw#1'\n")
        self.assertIn("twin.shadow_thing: the AWS thing 'gw#1' must be usable as one MQTT topic level", message)
        message = self.errors(link % "{tenant}+{device}" + "twin:\n  shadow_link: aws\n")
        self.assertIn("twin.shadow_thing: the AWS thing 'default+gateway' (the link's client id) must be usable",
                      message)
        config = self.load(link % "{tenant}+{device}" + "twin:\n  shadow_link: aws\n  shadow_thing: gw1\n")
        self.assertEqual(config.twin.shadow_thing, "gw1")

    def test_aws_thing_must_be_a_name_aws_takes(self) -> None:
        """AWS IoT's thing names are 1 to 128 of [a-zA-Z0-9:_-] (its shadows' thingName): a
        shadow_thing (or the link's client id standing for it) such as 'gw.1' is refused at
        load, naming the rule; no shadow request of it could ever be accepted."""
        link = "links:\n  links:\n    aws: {endpoint: 'tcp:host=h:port=1', client_id: '%s'}\n"
        message = self.errors(link % "{device}" + "twin:\n  shadow_link: aws\n  shadow_thing: 'gw.1'\n")
        self.assertIn("twin.shadow_thing: the AWS thing 'gw.1' is no AWS IoT thing name (1 to 128 characters", message)
        message = self.errors(link % "{tenant}.{device}" + "twin:\n  shadow_link: aws\n")
        self.assertIn("twin.shadow_thing: the AWS thing 'default.gateway' (the link's client id) is no AWS IoT", message)
        self.assertIn("is no AWS IoT thing name", self.errors(
            link % "{device}" + "twin:\n  shadow_link: aws\n  shadow_thing: '" + "t" * 129 + "'\n"))
        config = self.load(link % "{tenant}:{device}_1-a" + "twin:\n  shadow_link: aws\n")
        self.assertEqual(config.twin.shadow_link, "aws")

    def test_region_read_from_the_endpoint_host_when_host_names_none(self) -> None:
        """region empty: read from the endpoint's host name (aws.md), also when aws.host (the
        Host header, here a proxy's name) has none; it was refused as unreadable from aws.host."""
        credentials = Path(self.mktemp())
        credentials.write_text("[default]\naws_access_key_id = AKID\naws_secret_access_key = secret\n")
        config = self.load("links:\n  links:\n    aws:\n"
                           "      endpoint: 'tls:host=abc-ats.iot.eu-west-1.amazonaws.com:port=443'\n"
                           f"      aws: {{websocket: true, credentials_file: '{credentials}', host: proxy.example}}\n")
        self.assertEqual(config.links.links["aws"].aws.host, "proxy.example")  # type: ignore[union-attr]
