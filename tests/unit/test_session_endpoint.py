"""ModelEndpoint.with_model: an agent's model reaches the Realtime URL's ``?model=`` (how the model is chosen)."""

from urllib.parse import parse_qs, urlsplit

from services.session.options import ModelEndpoint


def test_with_model_replaces_the_query_parameter() -> None:
    base = ModelEndpoint("ws://127.0.0.1:8765/v1/realtime?model=gpt-realtime", api_key=None, model="gpt-realtime")
    echo = base.with_model("switchboard-echo")
    assert echo.model == "switchboard-echo"
    assert parse_qs(urlsplit(echo.url).query) == {"model": ["switchboard-echo"]}
    assert urlsplit(echo.url).path == "/v1/realtime"
    assert base.url.endswith("model=gpt-realtime")  # the service's own endpoint is unchanged


def test_with_model_adds_the_parameter_and_keeps_others() -> None:
    ep = ModelEndpoint("wss://example.test/v1/realtime?x=1", api_key="k", model=None).with_model("m")
    assert parse_qs(urlsplit(ep.url).query) == {"x": ["1"], "model": ["m"]}
    assert ep.api_key == "k"
