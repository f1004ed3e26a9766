"""API keys: one spec format from every source (``--api-key``, a key file, LMFORGE_API_KEYS),
malformed entries refused by name, and the bearer check."""

from pathlib import Path

import pytest

from lmforge.serve import ApiKeys, Principal, load_api_keys
from lmforge.serve.keys import access

ALICE = Principal("alice", ("claims", "staff"), "acme")


def test_env_var_separates_specs_by_whitespace_so_commas_stay_groups() -> None:
    # issue 13 item 1: split on commas, "staff" became a key and alice lost her tenant
    keys = load_api_keys(environ={"LMFORGE_API_KEYS": "sk-ops sk-alice:alice:claims,staff:acme\n"
                                                      "  sk-bob:bob\n"})
    assert keys.keys == {"sk-ops": None, "sk-alice": ALICE, "sk-bob": Principal("bob")}
    assert "staff" not in keys.keys


def test_the_old_comma_separated_env_var_is_an_error_naming_the_entry() -> None:
    with pytest.raises(ValueError, match=r"LMFORGE_API_KEYS #1.*may not contain ','"):
        load_api_keys(environ={"LMFORGE_API_KEYS": "sk-ops,sk-alice:alice:claims,staff:acme"})


def test_key_file_and_flags_share_the_parser(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# operators\nsk-ops\n\n  # alice\nsk-alice:alice:claims,staff:acme  \n"
                        "sk-carol:carol::acme\n", encoding="utf-8")
    keys = load_api_keys(["sk-cli:dave:staff"], key_file, {})
    assert keys.keys == {"sk-cli": Principal("dave", ("staff",)), "sk-ops": None,
                         "sk-alice": ALICE, "sk-carol": Principal("carol", (), "acme")}
    key_file.write_text("sk-ops\nsk-bad:\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{key_file.name}:2"):
        load_api_keys([], key_file, {})
    with pytest.raises(ValueError, match="--api-key #2"):
        load_api_keys(["sk-ok", "sk-x:u:g,,h"])


@pytest.mark.parametrize("spec", ["", ":alice", "sk-k:", "sk-k::staff", "sk-k:alice:g,,h",
                                  "sk-k:alice:g:", "sk-k:a:b:c:d", "sk-k alice", "sk-k:a,b",
                                  "sk-k:alice:staff:acme,other"])
def test_malformed_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="bad API key spec"):
        load_api_keys([spec])


def test_errors_do_not_print_the_whole_key() -> None:
    with pytest.raises(ValueError) as err:
        load_api_keys(["sk-supersecret:"])
    assert "supersecret" not in str(err.value)


def test_one_key_with_two_principals_is_an_error() -> None:
    assert load_api_keys(["sk-a:alice"], environ={"LMFORGE_API_KEYS": "sk-a:alice"}).keys == {
        "sk-a": Principal("alice")}
    with pytest.raises(ValueError, match="twice"):
        load_api_keys(["sk-a:alice"], environ={"LMFORGE_API_KEYS": "sk-a:bob"})


def test_bearer_prefix_is_required() -> None:
    keys = load_api_keys(["sk-ops", "sk-alice:alice"])
    assert keys.required and not ApiKeys().required
    assert keys.match("Bearer sk-ops") == "sk-ops"
    assert keys.match("bearer sk-alice ") == "sk-alice"  # trailing space: dropped
    for header in ("sk-ops", "Bearer sk-op", "Bearer sk-opsx", "Basic sk-ops", "", None,
                   "Bearer 密钥", "Bearer  sk-ops"):
        assert keys.match(header) is None


def test_principals_become_retrieval_access() -> None:
    assert access(None, {"contract": "A"}).user is None
    seen = access(ALICE)
    assert (seen.user, seen.groups, seen.tenant) == ("alice", ["claims", "staff"], "acme")
