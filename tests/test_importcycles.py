"""No import cycles in gateway/, counting TYPE_CHECKING and function-local imports."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.importcycles import cycles, module_graph

ROOT = Path(__file__).resolve().parent.parent


class ImportCycleTests(SynchronousTestCase):
    """The checker finds hidden cycles, and gateway/ has none."""

    def test_finds_a_cycle_hidden_under_type_checking(self) -> None:
        """An import under TYPE_CHECKING and one inside a function close a cycle."""
        pkg = Path(self.mktemp()) / "pkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
        (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
        (pkg / "c.py").write_text("from . import a\n")
        (pkg / "d.py").write_text("import pkg.a\n")
        self.assertEqual(cycles(module_graph(pkg)), [["pkg.a", "pkg.b", "pkg.c"]])

    def test_gateway_has_no_import_cycles(self) -> None:
        """Every module of gateway/ sits outside any cycle (see tests/importcycles.py)."""
        self.assertEqual(cycles(module_graph(ROOT / "gateway")), [])
