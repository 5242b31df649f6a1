"""Arbitrary bytes into the server, the client and ingest's JSON parse: only the project's own
errors come out (tests/fuzz_properties.py says what must hold). A few hundred examples each, a
few seconds in all; scripts/fuzz runs the same properties for minutes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz_properties import PROPERTIES

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", PROPERTIES)
def test_any_bytes_give_only_the_projects_own_errors(name):
    check, strategy = PROPERTIES[name]
    FUZZ(given(strategy)(check))()
