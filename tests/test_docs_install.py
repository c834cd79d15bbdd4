"""docs/install.md's promises about the .deb's systemd unit are the unit's settings: the
command it runs, as whom and where, how it restarts and stops, its limits and hardening, and
the settings it leaves unset (which the page says fall back to systemd's or the system's)."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "docs" / "install.md"
UNIT = ROOT / "debian" / "gateway.service"

#: What the page says of a setting (words it holds) -> the setting and its value in the unit.
PROMISES: dict[str, tuple[str, str]] = {
    "as user `gateway` in `/var/lib/gateway`": ("User", "gateway"),
    "`/var/lib/gateway`, restarts it": ("WorkingDirectory", "/var/lib/gateway"),
    "(`Restart=always`,\n5 s apart)": ("Restart", "always"),
    "started again 5 s later": ("RestartSec", "5"),
    "(`KillMode=mixed`)": ("KillMode", "mixed"),
    "(`TimeoutStopSec=90`)": ("TimeoutStopSec", "90"),
    "The unit sets `OOMPolicy=continue`": ("OOMPolicy", "continue"),
    "The unit sets `LimitNOFILE=65536`": ("LimitNOFILE", "65536"),
    "take the unit's `UMask=0027`": ("UMask", "0027"),
    "(`ProtectSystem=full`": ("ProtectSystem", "full"),
    "(`NoNewPrivileges=yes`, no\ncapabilities)": ("NoNewPrivileges", "yes"),
    "no new privileges and no capabilities": ("CapabilityBoundingSet", ""),
    "private `/tmp`": ("PrivateTmp", "yes"),
    "but for `/etc/gateway/conf.d`": ("ReadWritePaths", "/etc/gateway/conf.d"),
    "no access to\n`/home`": ("ProtectHome", "yes"),
    "(systemd's `LogsDirectory=`)": ("LogsDirectory", "gateway"),
    "`/var/lib/gateway` is mode 0750": ("StateDirectoryMode", "0750"),
    "`/run/gateway` | runtime files: unix sockets (made by systemd at each start)": ("RuntimeDirectory", "gateway"),
}

#: Settings the page says the unit leaves unset, with its words.
UNSET: dict[str, str] = {
    "TasksMax": "`TasksMax=` (none set",
    "OOMScoreAdjust": "the gateway with the unit's (none set: 0)",
    "CPUQuota": "the unit sets no `CPUQuota=` or\n  `CPUWeight=`",
    "CPUWeight": "the unit sets no `CPUQuota=` or\n  `CPUWeight=`",
    "LimitNPROC": "(`LimitNPROC=`; none set",
    "ExecReload": "so `systemctl reload` is not offered",
}


def unit_settings() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit's sections, in order, each key's values together."""
    if not UNIT.exists():
        raise SkipTest("no debian/gateway.service here")
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class UnitDocTests(SynchronousTestCase):
    """What docs/install.md says the unit does is in debian/gateway.service."""

    def setUp(self) -> None:
        self.unit = unit_settings()
        self.page = INSTALL.read_text(encoding="utf-8")

    def test_the_settings_the_page_names(self) -> None:
        """Each setting the page tells of has the value it says (and the page still says it)."""
        for words, (key, value) in PROMISES.items():
            with self.subTest(key=key):
                self.assertIn(words, self.page)
                self.assertEqual(self.unit.get(key), [value])

    def test_the_settings_the_page_says_are_unset(self) -> None:
        """Nor does the unit set what the page says it leaves to systemd or the system: a
        locale (`Environment=` holds no `LANG` nor `LC_*`) among them."""
        for key, words in UNSET.items():
            with self.subTest(key=key):
                self.assertIn(words, self.page)
                self.assertNotIn(key, self.unit)
        self.assertIn("The unit sets no locale", self.page)
        for environment in self.unit.get("Environment", []):
            self.assertFalse(re.search(r"\b(LANG|LC_[A-Z]+)=", environment), environment)

    def test_the_command_lines(self) -> None:
        """The unit runs the command the page quotes, after the same check as ``gatewayctl
        check-config`` (``ExecStartPre``), and ``systemctl cat gateway`` shows it."""
        command = re.search(r"The unit \(`systemctl cat gateway`\) runs\n\n    (.+)\n", self.page)
        assert command is not None
        self.assertEqual(self.unit["ExecStart"], [command.group(1)])
        self.assertEqual(self.unit["ExecStartPre"],
                         ["/opt/venvs/gateway/bin/gatewayctl check-config --config /etc/gateway/gateway.yaml"])
        self.assertIn("The unit runs the same check before every start (`ExecStartPre`)", self.page)


OVERRIDES = ROOT / "debian" / "gateway.lintian-overrides"


class LintianOverrideDocTests(SynchronousTestCase):
    """docs/install.md's "Lint" bullet names every lintian tag the package overrides."""

    def test_every_overridden_tag_is_named(self) -> None:
        """A tag overridden in debian/gateway.lintian-overrides and not named on the page (the
        page listed four kinds while the file overrode six tags) fails here."""
        if not OVERRIDES.exists():
            raise SkipTest("no debian/gateway.lintian-overrides here")
        tags = {match.group(1) for match in re.finditer(r"^gateway: ([a-z0-9-]+)", OVERRIDES.read_text(encoding="utf-8"),
                                                         re.M)}
        self.assertTrue(tags)
        page = INSTALL.read_text(encoding="utf-8")
        bullet = re.search(r"- \*\*Lint\.\*\*(.+?)\n\n", page, re.S)
        assert bullet is not None, "install.md has no Lint bullet"
        named = set(re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", bullet.group(1)))
        self.assertEqual(sorted(tags - named), [])
