"""One network for the whole adversarial package, and the table of cases it fills."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.adversarial.support import AdvNet, CaseTable, start_adv_network
from tests.harness.procs import ProcessManager


@pytest.fixture(scope="package")
def case_table() -> Iterator[CaseTable]:
    table = CaseTable()
    yield table
    print("\nadversarial cases (also in bench/results/adversarial.json):\n" + table.write())


@pytest.fixture(scope="package")
def adv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdvNet]:
    pm = ProcessManager()
    try:
        yield start_adv_network(tmp_path_factory.mktemp("adv"), pm)
    finally:
        pm.close()
