"""The Python interface apps.md shows is the code's: the operations' signatures, the fields of
their results, the function that builds the ``engine_report`` shape it shows, and the
service's constructor."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.operations import AppOperations, InstallResult
from gateway.apps.process import ProgramStatus
from gateway.apps.service import AppsService
from gateway.apps.snapshot import AppSnapshot, AppsSnapshot

ROOT = Path(__file__).resolve().parent.parent
APPS = (ROOT / "docs" / "apps.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of apps.md's ``## title`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", APPS, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def block(text: str, language: str) -> str:
    """The first fenced block of ``language`` in ``text``."""
    match = re.search(rf"^```{language}\n(.*?)^```", text, re.S | re.M)
    assert match is not None, language
    return match.group(1)


def resolve(dotted: str) -> Any:
    """The object a dotted name (``gateway.x.y.z``) names: a module's attribute."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


class AppsInterfaceTests(SynchronousTestCase):
    """apps.md's Python interface, against the code."""

    def test_the_operations_signatures_are_the_codes(self) -> None:
        """Each signature of "The operations interface" is AppOperations' method's, as
        inspect shows it (without ``self`` and the quotes of postponed annotations)."""
        lines = [line.split("#")[0].strip() for line in block(section("The operations interface (Python)"),
                                                            "python").splitlines()]
        shown = {line.split("(")[0]: line[line.index("("):].replace("pathlib.", "") for line in lines if line}
        code = {name: str(inspect.signature(getattr(AppOperations, name))).replace("self, ", "").replace("'", "")
                for name in shown}
        self.assertEqual(shown, code)
        self.assertEqual(len(shown), 9)

    def test_the_results_fields_are_the_codes(self) -> None:
        """The fields apps.md lists for InstallResult and ProgramStatus are theirs, in order."""
        text = section("The operations interface (Python)")
        result = re.search(r"`InstallResult\(([^)]*)\)`", text)
        status = re.search(r"`ProgramStatus` has (.*?)\.\n", text, re.S)
        assert result is not None and status is not None
        self.assertEqual(result.group(1).split(", "), [f.name for f in dataclasses.fields(InstallResult)])
        self.assertEqual(re.findall(r"`(\w+)`(?! \()", status.group(1).replace("(a `ProgramState`)", "")),
                         [f.name for f in dataclasses.fields(ProgramStatus)])

    def test_the_engine_report_function_gives_the_shape_shown(self) -> None:
        """The function "Status for the telemetry service" names exists and, given the
        example's program, builds the example as shown."""
        text = section("Status for the telemetry service")
        names = re.findall(r"`(gateway(?:\.\w+)+)\(", text)
        self.assertEqual(len(names), 1, text)
        example = json.loads(block(text, "json"))
        [(name, program)] = example["apps"][0].items()
        snapshot = AppsSnapshot(example["version"], (AppSnapshot(
            name=name, app=program["app"], version=program["version"], status=program["status"],
            pid=program["pid"], uptime_s=program["uptime"], exitstatus=program["exitstatus"],
            restarts=program["restarts"]),))
        self.assertEqual(resolve(names[0])(snapshot), example)

    def test_the_services_parameters_are_the_codes(self) -> None:
        """"The service" shows AppsService's parameters, each of them, in order, with its default
        (a parameter added to the code and not to the page, oom_kills, went unseen)."""
        shown = " ".join(block(section("The service"), "python").split())
        match = re.fullmatch(r"AppsService\((.*)\)", shown)
        assert match is not None, shown
        parameters = [part.strip() for part in match.group(1).split(",")]
        code = list(inspect.signature(AppsService.__init__).parameters.values())[1:]
        self.assertEqual([part.split(":")[0].split("=")[0] for part in parameters], [p.name for p in code])
        defaults = {part.split("=")[0]: part.split("=")[1] for part in parameters if "=" in part}
        self.assertEqual(defaults, {p.name: "os.killpg" if p.default is os.killpg else repr(p.default)
                                    for p in code if p.default is not inspect.Parameter.empty})
