"""Management commands: tokens, quotas, nodes and the VMID pool."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from lifecycle.choices import PoolKind
from lifecycle.models import AccountQuota, Allocation, ApiToken, AuditEvent, Node
from lifecycle.services.accounts import api_token_authenticate, token_hash

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_apitoken_prints_the_token_last_and_stores_only_its_hash():
    out, _ = run("apitoken", "carol", "--create", "--staff")
    raw = out.strip().splitlines()[-1]
    token = ApiToken.objects.get(user__username="carol")
    assert token.key_hash == token_hash(raw) and raw not in token.key_hash
    assert token.user.is_staff
    assert api_token_authenticate(raw=raw).pk == token.pk
    assert AccountQuota.objects.filter(user=token.user).exists()
    # Nothing about the raw token reaches the audit trail.
    assert raw not in str(list(AuditEvent.objects.values_list("data", flat=True)))

    listing, _ = run("apitoken", "carol")
    assert token.prefix in listing and raw not in listing
    run("apitoken", "carol", "--revoke", token.prefix)
    assert api_token_authenticate(raw=raw) is None


def test_apitoken_refuses_unknown_user_without_create():
    with pytest.raises(CommandError, match="No user named"):
        run("apitoken", "nobody")


def test_setquota_sets_limits_and_validates():
    run("apitoken", "dave", "--create")
    out, _ = run("setquota", "dave", "--max-servers", "7", "--max-memory-mb", "9000")
    assert "0/7 servers" in out
    quota = AccountQuota.objects.get(user__username="dave")
    assert (quota.max_servers, quota.max_memory_mb) == (7, 9000)
    with pytest.raises(CommandError):
        run("setquota", "dave", "--max-servers", "-1")
    with pytest.raises(CommandError):
        run("setquota", "ghost", "--max-servers", "1")


def test_node_and_vmid_pool_commands_are_idempotent():
    run("vmidpool", "--range", "100-199")
    out, _ = run("vmidpool", "--range", "100-249")
    assert "50 values added" in out
    run("node", "add", "pve9", "--memory-mb", "1024", "--cores", "2", "--subnet",
        "10.9.0.0/29", "--gateway", "10.9.0.1", "--ports", "40000-40009")
    out, _ = run("node", "add", "pve9", "--memory-mb", "1", "--cores", "1", "--subnet",
                 "10.9.0.0/29", "--gateway", "10.9.0.1", "--ports", "40000-40009")
    assert "left as it is" in out
    node = Node.objects.get(name="pve9")
    assert node.memory_mb == 1024
    # /29: 6 hosts minus the gateway.
    assert Allocation.objects.filter(pool__node=node, pool__kind=PoolKind.IP).count() == 5
    assert Allocation.objects.filter(pool__node=node, pool__kind=PoolKind.PORT).count() == 10
    run("node", "disable", "pve9")
    assert not Node.objects.get(name="pve9").enabled
    listing, _ = run("node", "list")
    assert "DISABLED" in listing
    with pytest.raises(CommandError):
        run("node", "add", "bad", "--memory-mb", "1", "--cores", "1", "--subnet",
            "10.0.0.0/24", "--gateway", "10.1.0.1", "--ports", "40000-40009")
