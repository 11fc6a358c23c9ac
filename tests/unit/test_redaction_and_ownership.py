"""core.redaction (secrets masked by key and by shape, ids left readable) and core.ownership
(the `zlh-<uuid>` tag and `zlh:<uuid>` comment, built and parsed in one place)."""
from __future__ import annotations

import copy
import uuid

import pytest

from core.ownership import (
    container_tag,
    container_tags,
    owner_from_comment,
    owner_from_tag,
    owners_from_tags,
    record_comment,
)
from core.redaction import MASK, is_secret_key, redact, redact_text
from lifecycle.clients.proxmox import parse_tags

UID = "550e8400-e29b-41d4-a716-446655440000"


# --- redaction by key ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    "token", "api_token", "PROXMOX_TOKEN_SECRET", "secret", "password", "passwd", "pwd",
    "api_key", "api-key", "apikey", "private_key", "access_key", "webhook", "webhook_url",
    "Authorization", "authorisation", "cookie", "credentials", "signature", "dsn", "key",
    "ssh_key",
])
def test_secret_keys(key):
    assert is_secret_key(key)
    assert redact({key: "value-123"}) == {key: MASK}


@pytest.mark.parametrize("key", [
    "idempotency_key", "dedupe_key", "alert_key", "key_hash_prefix", "name", "slug", "vmid",
    "monkey", "keyboard", "status", "node", "description",
])
def test_keys_that_carry_no_secret(key):
    assert not is_secret_key(key)
    assert redact({key: "plain"}) == {key: "plain"}


def test_redact_walks_nested_structures_and_leaves_the_rest():
    value = {
        "server": {"slug": "alpha", "id": UID, "vmid": 5000, "ok": True, "ratio": 0.5},
        "env": [{"name": "password", "value": "hunter2"},
                {"name": "EDGE_ZONE", "value": "play.example.com"},
                {"key": "api_token", "value": "t0k"}],
        "headers": {"Authorization": "Bearer abc", "Accept": "application/json"},
        "tuple": ("x", {"secret": "s"}),
        "none": None,
    }
    before = copy.deepcopy(value)
    out = redact(value)
    assert value == before, "redact must not mutate its argument"
    assert out["server"] == {"slug": "alpha", "id": UID, "vmid": 5000, "ok": True, "ratio": 0.5}
    assert out["env"][0] == {"name": "password", "value": MASK}
    assert out["env"][1] == {"name": "EDGE_ZONE", "value": "play.example.com"}
    assert out["env"][2]["value"] == MASK
    assert out["headers"] == {"Authorization": MASK, "Accept": "application/json"}
    assert out["tuple"] == ["x", {"secret": MASK}]
    assert out["none"] is None


def test_empty_secrets_stay_visibly_empty():
    assert redact({"token": "", "password": None, "secret": {}, "api_key": []}) == {
        "token": "", "password": None, "secret": {}, "api_key": []}


def test_non_string_keys_are_stringified():
    assert redact({1: "a", "password": 42}) == {"1": "a", "password": MASK}


def test_secret_shaped_values_are_masked_under_any_key():
    out = redact({"message": "connect mysql://zlh:s3cret@db:3306/zlh failed",
                  "list": ["Bearer abc.def"]})
    assert out == {"message": f"connect mysql://zlh:{MASK}@db:3306/zlh failed",
                   "list": [f"Bearer {MASK}"]}


def test_absurdly_deep_values_are_cut_off():
    deep: dict = {}
    node = deep
    for _ in range(30):
        node["n"] = {}
        node = node["n"]
    node["leaf"] = "x"
    out = redact(deep)
    for _ in range(21):
        out = out["n"]
    assert out == MASK


# --- redaction by shape --------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("mysql://zlh:s3cret@db.internal:3306/zlh", f"mysql://zlh:{MASK}@db.internal:3306/zlh"),
    ("redis://:hunter2@127.0.0.1:6379/0", f"redis://:{MASK}@127.0.0.1:6379/0"),
    ("https://discord.com/api/webhooks/123456789012345678/AbC_def-123.xyz",
     f"https://discord.com/api/webhooks/123456789012345678/{MASK}"),
    ("https://discord.com/api/v10/webhooks/1234/tok",
     f"https://discord.com/api/v10/webhooks/1234/{MASK}"),
    ("Authorization: Bearer zzz.yyy.xxx", f"Authorization: Bearer {MASK}"),
    ("basic dXNlcjpwYXNz", f"basic {MASK}"),
    (f"PVEAPIToken=root@pam!zlh={UID}", f"PVEAPIToken={MASK}"),
    ("token zlh_abcdefghijklmnopqrstu here", f"token {MASK} here"),
    ("ghp_abcdefghijklmnopqrstuvwxyz123456", MASK),
    ("AKIAABCDEFGHIJKLMNOP", MASK),
    ("secret=abc123 and password: 'hunter2', api_key=xyz",
     f"secret={MASK} and password: '{MASK}', api_key={MASK}"),
    ("random aB3dE5fG7hJ9kL1mN3pQ5rS7 end", f"random {MASK} end"),
    ("hash " + "a1" * 20 + " end", f"hash {MASK} end"),
])
def test_secret_shapes_in_free_text(text, expected):
    assert redact_text(text) == expected


@pytest.mark.parametrize("text", [
    f"server {UID} failed",
    f"server {UID.upper()} failed",
    "slug my-very-long-server-name-123456 is taken",
    f"tag zlh-{UID} on CT 5000",
    f"comment zlh:{UID}",
    "https://proxmox.internal:8006/api2/json/nodes/pve1/lxc/5000",
    "short aB3dE5 mixed but short",
    "ALLUPPERCASEANDDIGITS1234567890",
    "UPID:pve1:0000ABCD:00112233:65A1B2C3:vzcreate:5000:root@pam!zlh:",
])
def test_ids_slugs_and_plain_urls_stay_readable(text):
    assert redact_text(text) == text


def test_redact_text_is_idempotent():
    text = "Bearer abc and mysql://u:p@h/db and zlh_abcdefghijklmnopqrstuvwxyz"
    once = redact_text(text)
    assert MASK in once and redact_text(once) == once


# --- ownership -----------------------------------------------------------------------------------
def test_tag_round_trip():
    sid = str(uuid.uuid4())
    assert container_tag(sid) == f"zlh-{sid}"
    assert owner_from_tag(container_tag(sid)) == sid
    assert container_tags(sid) == f"zlh;zlh-{sid}"
    assert owners_from_tags(parse_tags(container_tags(sid))) == {sid}


def test_tags_are_read_case_and_space_insensitively_into_canonical_ids():
    sid = str(uuid.uuid4())
    assert owner_from_tag(f"  ZLH-{sid.upper()} ") == sid
    assert owner_from_tag(container_tag(uuid.UUID(sid))) == sid


@pytest.mark.parametrize("tag", ["zlh", "zlh-", "zlh-backup", "zlh-12345", f"zlh_{UID}",
                                 f"other-{UID}", UID, f"zlh:{UID}", ""])
def test_tags_that_name_no_owner(tag):
    assert owner_from_tag(tag) is None


def test_owners_from_tags_keeps_only_ownership_tags():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    tags = {"zlh", f"zlh-{a}", f"zlh-{b}", "zlh-staging", "web"}
    assert owners_from_tags(tags) == {a, b}
    assert owners_from_tags([]) == set()


def test_comment_round_trip():
    sid = str(uuid.uuid4())
    assert record_comment(sid) == f"zlh:{sid}"
    assert owner_from_comment(record_comment(sid)) == sid
    assert owner_from_comment(record_comment(uuid.UUID(sid))) == sid


@pytest.mark.parametrize("comment", [None, "", "zlh:", "zlh:not-a-uuid", "made by hand",
                                     f"zlh-{UID}", f" zlh:{UID}", f"owner zlh:{UID}"])
def test_foreign_comments_name_no_owner(comment):
    assert owner_from_comment(comment) is None
