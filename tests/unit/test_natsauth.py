"""What ``switchboard up`` generates for NATS: 0600 seeds per identity, kept across starts, a server
configuration with one permission block per service and none for the operator, and per-child environments."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import nkeys

from shared import natsauth, subjects
from shared.config import load_settings
from switchboard.supervisor import Supervisor


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_seeds_are_private_valid_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "auth"
    config, seeds = natsauth.prepare_server(directory)
    assert set(seeds) == set(natsauth.IDENTITIES)
    assert _mode(directory) == 0o700 and _mode(config) == 0o600
    for path in seeds.values():
        assert _mode(path) == 0o600
        assert natsauth.public_key(path.read_bytes()).startswith("U")
        nkeys.from_seed(bytearray(path.read_bytes().strip()))  # a valid user seed
    before = {name: path.read_bytes() for name, path in seeds.items()}
    _, again = natsauth.prepare_server(directory)
    assert {name: path.read_bytes() for name, path in again.items()} == before


def test_operator_seed_of_the_caller_is_adopted(tmp_path: Path) -> None:
    mine = natsauth.new_user_seed()
    _, seeds = natsauth.prepare_server(tmp_path / "auth", operator_seed=mine)
    assert seeds["operator"].read_bytes().strip() == mine


def test_server_config_lists_every_user_with_its_permissions(tmp_path: Path) -> None:
    config, seeds = natsauth.prepare_server(tmp_path / "auth")
    text = config.read_text()
    for path in seeds.values():
        assert natsauth.public_key(path.read_bytes()) in text
    assert text.count('"permissions"') == len(natsauth.SERVICES)  # the operator has none: full rights
    assert "no_auth_user" not in text and '"user"' not in text  # no anonymous or password users


def test_no_service_may_delete_purge_or_update_streams() -> None:
    for name in natsauth.SERVICES:
        perms = natsauth.PERMISSIONS[name]
        assert perms is not None
        block = perms.as_config()
        assert set(natsauth.DENY_ALWAYS) <= set(block["publish"]["deny"])
        for subject in block["publish"]["allow"]:
            assert not re.match(r"\$JS\.API\.STREAM\.(DELETE|PURGE|UPDATE|MSG\.DELETE)", subject), (name, subject)
            assert subject not in (">", "$JS.API.>", "$JS.>")
        assert [s for s in block["subscribe"]["allow"] if s.startswith("_INBOX")] == [f"_INBOX.{name}.>"]


def test_children_get_their_own_seed_and_the_generated_secrets(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, nats_url=None, token_secret=None, audit_key=None)
    supervisor = Supervisor(settings)
    supervisor._prepare_secrets()
    supervisor.nats_config, supervisor.seeds = natsauth.prepare_server(natsauth.auth_dir(tmp_path))
    gateway = supervisor.child_env("gateway")
    assert gateway["SWITCHBOARD_NATS_NKEY_SEED"] == str(supervisor.seeds["gateway"].resolve())
    assert supervisor.child_env()["SWITCHBOARD_NATS_NKEY_SEED"] == str(supervisor.seeds["operator"].resolve())
    assert "SWITCHBOARD_NATS_NKEY_SEED" not in supervisor.child_env("localmodel")
    assert len(gateway["SWITCHBOARD_TOKEN_SECRET"]) == 64 and len(gateway["SWITCHBOARD_AUDIT_KEY"]) == 64
    assert _mode(tmp_path / "auth" / "audit_key") == 0o600
    assert gateway["SWITCHBOARD_INSECURE_DEV"] == "true"  # loopback


def test_client_options(tmp_path: Path) -> None:
    seed = natsauth.new_user_seed().decode()
    assert natsauth.client_options(nkey_seed=seed, identity="tools") == {"nkeys_seed_str": seed,
                                                                         "inbox_prefix": "_INBOX.tools"}
    path = tmp_path / "x.nk"
    path.write_text(seed)
    assert natsauth.client_options(nkey_seed=str(path))["nkeys_seed"] == str(path)
    assert natsauth.client_options(creds=tmp_path / "u.creds", nkey_seed=seed) == {
        "user_credentials": str(tmp_path / "u.creds")}


def _nats_match(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def test_only_the_session_may_publish_the_disclosure_and_the_recorder_archives_it() -> None:
    subject = subjects.session_disclosure("call_x")
    for name in natsauth.SERVICES:
        perms = natsauth.PERMISSIONS[name]
        assert perms is not None
        block = perms.as_config()
        may_publish = any(_nats_match(p, subject) for p in block["publish"]["allow"])
        assert may_publish == (name == "session"), name  # nobody else can forge the proof
    recorder = natsauth.PERMISSIONS["recorder"]
    assert recorder is not None
    assert any(_nats_match(p, subject) for p in recorder.as_config()["subscribe"]["allow"])
