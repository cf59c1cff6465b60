"""Fixtures of the server tests. `fake_client` drives the app in process over a stand-in engine (for the
server's own logic); `engine`, `live_url` and `live_app` use the real engine on the tiny model, and `client`
(the official `openai` client) and `model` (the id it serves) talk to `live_url`."""

from __future__ import annotations

import openai
import pytest
from fastapi.testclient import TestClient

from pixtral.engine import Engine
from pixtral.serve import ServeSettings, create_app
from tests.serve.fake_engine import FakeEngine
from tests.serve.serve_helpers import live_server, make_tiny_model


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_client(fake_engine):
    with TestClient(create_app(fake_engine, ServeSettings(access_log=False))) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    return Engine.load(model=str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def live_app(engine):
    return create_app(engine, ServeSettings(access_log=False, max_queue=64))


@pytest.fixture(scope="session")
def live_url(live_app):
    with live_server(live_app) as url:
        yield url


@pytest.fixture(scope="module")
def client(live_url):
    return openai.OpenAI(base_url=live_url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client):
    (card,) = client.models.list().data
    return card.id
