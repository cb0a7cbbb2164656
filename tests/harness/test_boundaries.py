"""bench/, chaos/ and harness/ share harness/ with the tests, and never import the tests: a
helper both need lives in harness/ (issue #14: bench imported test helpers)."""

from __future__ import annotations

import ast

import pytest

from harness.processes import ROOT


@pytest.mark.parametrize("package", ["bench", "chaos", "harness"])
def test_nothing_outside_the_tests_imports_them(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                "%s:%d %s" % (path.relative_to(ROOT), node.lineno, n) for n in names if n.split(".")[0] == "tests"
            ]
    assert offenders == []
