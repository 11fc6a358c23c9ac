"""lifecycle.validation: what a user may order. Valid bodies become a normalised ServerSpec;
each kind of invalid input raises InvalidRequest naming the field."""
from __future__ import annotations

from typing import Any

import pytest

from lifecycle.errors import InvalidRequest
from lifecycle.validation import (
    IDEMPOTENCY_KEY_MAX,
    ServerSpec,
    idempotency_key_errors,
    name_errors,
    server_spec_validate,
)


def game(**over: Any) -> dict[str, Any]:
    body = {"name": "alpha", "kind": "game", "plan": "vanilla", "variant": "vanilla",
            "version": "1.21.1"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def dev(**over: Any) -> dict[str, Any]:
    body = {"name": "my-ide", "kind": "dev", "plan": "modded", "runtime": "python",
            "runtime_version": "3.12"}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def refused(body: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(InvalidRequest) as exc:
        server_spec_validate(body)
    err = exc.value
    assert err.code == "invalid" and err.http_status == 400
    assert err.message == "The server request is not valid."
    assert err.fields and all(isinstance(v, list) and v for v in err.fields.values())
    return err.fields


# --- valid ---------------------------------------------------------------------------------------
def test_a_game_server_body():
    spec = server_spec_validate(game(variant="paper", version="1.21.4", plan="heavy"))
    assert spec == ServerSpec(name="alpha", kind="game", plan="heavy", variant="paper",
                              version="1.21.4")
    assert spec.as_dict() == {"name": "alpha", "kind": "game", "plan": "heavy",
                              "variant": "paper", "version": "1.21.4", "runtime": "",
                              "runtime_version": "", "enable_code_server": False}


def test_a_dev_container_body():
    spec = server_spec_validate(dev(enable_code_server=True, runtime="go",
                                    runtime_version="1.23"))
    assert spec == ServerSpec(name="my-ide", kind="dev", plan="modded", runtime="go",
                              runtime_version="1.23", enable_code_server=True)


def test_dotnet_is_a_dev_runtime():
    assert server_spec_validate(dev(runtime="dotnet", runtime_version="9")).runtime == "dotnet"
    assert "runtime_version" in refused(dev(runtime="dotnet", runtime_version="7"))


def test_a_dev_container_may_not_use_a_plan_below_the_minimum_memory():
    fields = refused(dev(plan="vanilla"))
    assert fields == {"plan": ["The vanilla plan (2048 MB) is too small for a dev container; "
                               "choose one of: modded, heavy."]}
    assert server_spec_validate(game(plan="vanilla")).plan == "vanilla"


def test_the_dev_minimum_is_a_setting(settings):
    settings.DEV_MIN_MEMORY_MB = 2048
    assert server_spec_validate(dev(plan="vanilla")).plan == "vanilla"
    settings.DEV_MIN_MEMORY_MB = 16384
    assert refused(dev(plan="heavy")) == {"plan": ["No plan is offered for a dev container."]}


def test_blank_and_null_optional_fields_are_normalised_to_empty():
    spec = server_spec_validate(game(runtime="", runtime_version=None, enable_code_server=False))
    assert spec.runtime == "" and spec.runtime_version == ""
    spec = server_spec_validate(dev(variant="", version=None))
    assert spec.variant == "" and spec.version == ""


@pytest.mark.parametrize("name", ["abc", "a1b", "my-server", "x" * 32, "0day", "server-2"])
def test_acceptable_names(name):
    assert name_errors(name) == []
    assert server_spec_validate(game(name=name)).name == name


# --- invalid -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,reason", [
    ("ab", "3 to 32"),
    ("x" * 33, "3 to 32"),
    ("Upper", "lowercase"),
    ("-lead", "lowercase"),
    ("trail-", "lowercase"),
    ("spa ce", "lowercase"),
    ("dot.ted", "lowercase"),
    ("émile", "lowercase"),
    ("admin", "reserved"),
    ("velocity", "reserved"),
    ("dev-123", "'dev-'"),
    ("zlh-foo", "'zlh-'"),
    ("xn--abc", "'xn--'"),
    ("a--b", "Two hyphens"),
])
def test_each_bad_name_says_why(name, reason):
    problems = name_errors(name)
    assert any(reason in p for p in problems), problems
    assert any(reason in p for p in refused(game(name=name))["name"])


def test_a_name_can_have_several_problems():
    assert len(name_errors("A")) == 2  # too short and not a DNS label


@pytest.mark.parametrize("field", ["name", "kind", "plan"])
def test_required_fields(field):
    assert refused(game(**{field: ...}))[field] == ["This field is required."]


@pytest.mark.parametrize("field,value", [
    ("name", 5), ("kind", ["game"]), ("plan", {"x": 1}), ("variant", 1), ("version", 1.21),
    ("runtime", True), ("runtime_version", 3),
])
def test_non_strings_are_refused_before_anything_else(field, value):
    fields = refused(game(**{field: value}))
    assert fields == {field: ["Must be a string."]}


@pytest.mark.parametrize("body,field,text", [
    (game(kind="vm"), "kind", "Unknown kind 'vm'"),
    (game(plan="huge"), "plan", "Unknown plan 'huge'"),
    (game(variant="forge"), "variant", "Unknown variant 'forge'"),
    (game(variant="paper", version="1.20.1"), "version", "Unknown paper version '1.20.1'"),
    (game(variant=...), "variant", "Required for a game server."),
    (game(version=...), "version", "Required for a game server."),
    (game(runtime="python"), "runtime", "Only for dev containers."),
    (game(runtime_version="3.12"), "runtime_version", "Only for dev containers."),
    (game(enable_code_server=True), "enable_code_server", "Only for dev containers."),
    (game(enable_code_server="yes"), "enable_code_server", "Must be true or false."),
    (dev(variant="paper"), "variant", "Only for game servers."),
    (dev(version="1.21.1"), "version", "Only for game servers."),
    (dev(runtime=...), "runtime", "Required for a dev container."),
    (dev(runtime_version=...), "runtime_version", "Required for a dev container."),
    (dev(runtime="cobol"), "runtime", "Unknown runtime 'cobol'"),
    (dev(runtime="node", runtime_version="18"), "runtime_version", "Unknown node version '18'"),
])
def test_each_invalid_input_is_a_field_error(body, field, text):
    fields = refused(body)
    assert field in fields, fields
    assert any(p.startswith(text) for p in fields[field]), fields[field]


def test_all_problems_are_reported_at_once():
    fields = refused({"name": "A", "kind": "game", "plan": "huge", "variant": "forge",
                      "runtime": "python"})
    assert set(fields) == {"name", "plan", "variant", "version", "runtime"}


def test_unknown_choices_list_the_allowed_ones():
    (problem,) = refused(game(plan="huge"))["plan"]
    assert all(p in problem for p in ("vanilla", "modded", "heavy"))


# --- idempotency keys ----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["k1", "abc-123_DEF.~!", "x" * IDEMPOTENCY_KEY_MAX,
                                 "550e8400-e29b-41d4-a716-446655440000"])
def test_acceptable_idempotency_keys(key):
    assert idempotency_key_errors(key) == []


@pytest.mark.parametrize("key", ["", "with space", "tab\there", "x" * (IDEMPOTENCY_KEY_MAX + 1),
                                 "naïve", "new\nline", "\x7f"])
def test_bad_idempotency_keys(key):
    (problem,) = idempotency_key_errors(key)
    assert "Idempotency-Key" in problem and str(IDEMPOTENCY_KEY_MAX) in problem


def test_a_trailing_newline_is_not_a_printable_character():
    assert idempotency_key_errors("k1\n") != []


def test_a_name_with_a_trailing_newline_is_not_a_dns_label():
    assert name_errors("alpha\n") != []
