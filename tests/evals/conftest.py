from __future__ import annotations

import pytest

from tests.evals.fake_server import FakeOpenAIServer
from tests.evals.fixtures import Fixtures, build_fixtures


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
