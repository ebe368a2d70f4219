"""Settings: defaults, environment first, and a clear error naming a bad variable."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "SWITCHBOARD_REALTIME_URL", "SWITCHBOARD_NATS_URL", "SWITCHBOARD_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.nats_port == 4333 and s.gateway_port == 8080 and s.recorder_port == 8081
    assert s.localmodel_port == 8765
    assert s.uses_local_model
    assert s.effective_realtime_url.startswith("ws://127.0.0.1:8765/v1/realtime?model=gpt-realtime")
    assert s.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert s.effective_nats_url == "nats://127.0.0.1:4333"


def test_openai_key_selects_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_REALTIME_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("SWITCHBOARD_MODEL", "gpt-realtime-mini")
    s = load_settings()
    assert not s.uses_local_model
    assert s.effective_realtime_url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini"
    monkeypatch.setenv("SWITCHBOARD_REALTIME_URL", "ws://example.invalid/v1/realtime")
    assert load_settings().effective_realtime_url == "ws://example.invalid/v1/realtime"


@pytest.mark.parametrize(("var", "value"), [("SWITCHBOARD_GATEWAY_PORT", "http"),
                                            ("SWITCHBOARD_JS_REPLICAS", "0"),
                                            ("SWITCHBOARD_LOCALMODEL_MODE", "parrot")])
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        load_settings()
