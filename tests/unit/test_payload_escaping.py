"""lifecycle.worker.steps.payload: the Velocity forwarding secret written into
`config/FabricProxy-Lite.toml` and `config/paper-global.yml` is escaped for each format, so a
quote, backslash, newline or any other character in it round-trips exactly through a real parser
(tomllib, PyYAML) and can neither break the file nor add a key."""
from __future__ import annotations

import tomllib
import uuid

import pytest
import yaml
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from lifecycle.models import ContainerInstance
from lifecycle.worker.steps.payload import provisioning_payload, toml_string, yaml_string

NASTY = [
    'a"b',
    "it's",
    "back\\slash\\",
    "line\nbreak",
    'x"\nsecret = "injected',
    "x'\n    enabled: false\nevil: 1",
    "]\n[evil]\nkey = 1",
    "# not a comment",
    '"\'\\\n]#',
    "\r\n\t\b\f\x00\x1b\x7f\x85\u2028\u2029\ufeff",
    "ünïcödé-€-😀",
    "${jndi:ldap://x}",
    "",
    "'''",
    '"""',
    "key: value",
    "- item",
    "&anchor *alias !tag",
]

FABRIC_KEYS = {"hackOnlineMode", "hackEarlySend", "hackMessageChain", "disconnectMessage",
               "secret"}


def _server(variant: str) -> ContainerInstance:
    return ContainerInstance(id=uuid.uuid4(), name="alpha", slug="alpha", kind="game",
                             variant=variant, version="1.21.1", plan="modded", memory_mb=4096,
                             cores=2, disk_gb=16, ports={"game": 30001})


def _fabric_file() -> str:
    return provisioning_payload(_server("fabric"))["files"]["config/FabricProxy-Lite.toml"]


def _paper_file() -> str:
    return provisioning_payload(_server("paper"))["files"]["config/paper-global.yml"]


@pytest.mark.parametrize("secret", NASTY)
def test_the_fabric_toml_parses_back_to_the_secret_and_no_other_key(settings, secret):
    settings.VELOCITY_FORWARDING_SECRET = secret
    doc = tomllib.loads(_fabric_file())
    assert doc["secret"] == secret
    assert set(doc) == FABRIC_KEYS
    assert doc["hackOnlineMode"] is True and doc["hackEarlySend"] is False


@pytest.mark.parametrize("secret", NASTY)
def test_the_paper_yaml_parses_back_to_the_secret_and_no_other_key(settings, secret):
    settings.VELOCITY_FORWARDING_SECRET = secret
    doc = yaml.safe_load(_paper_file())
    assert doc == {"proxies": {"velocity": {"enabled": True, "online-mode": True,
                                            "secret": secret}}}


def test_a_plain_secret_stays_readable():
    assert toml_string("fwd-Secret-7f3a9c1e5b") == '"fwd-Secret-7f3a9c1e5b"'
    assert yaml_string("fwd-Secret-7f3a9c1e5b") == '"fwd-Secret-7f3a9c1e5b"'


def test_a_value_that_is_not_unicode_text_is_refused():
    with pytest.raises(ValueError):
        toml_string("bad\udc80byte")
    with pytest.raises(ValueError):
        yaml_string("bad\udc80byte")


_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)


@hsettings(max_examples=300, deadline=None)
@given(_TEXT)
def test_any_text_round_trips_through_both_parsers(value):
    assert tomllib.loads(f"k = {toml_string(value)}\n") == {"k": value}
    assert yaml.safe_load(f"k: {yaml_string(value)}\n") == {"k": value}
    assert yaml.safe_load(f"a:\n  b:\n    k: {yaml_string(value)}\n") == {"a": {"b": {"k": value}}}
