from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_server import FakeOpenAIServer  # noqa: E402
from fixtures import Fixtures, build_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    return build_fixtures(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture
def server(fixtures: Fixtures):
    srv = FakeOpenAIServer(fixtures.oracle)
    url = srv.start()
    srv.url = url
    yield srv
    srv.stop()
