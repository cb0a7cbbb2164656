from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.processes import processes  # noqa: F401  (fixture)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    # Lets fixtures see whether the test failed (processes prints its logs then).
    report = yield
    setattr(item, "rep_" + report.when, report)  # type: ignore[attr-defined]
    return report
