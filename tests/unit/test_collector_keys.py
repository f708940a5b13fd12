"""The collector's write keys: the file loader's errors, and constant-time authentication."""

from __future__ import annotations

import hmac
import json
import pickle
from pathlib import Path

import pytest

from streams.collector import keys as keys_module
from streams.collector.keys import WriteKeys
from streams.errors import ConfigurationError

KEY_A1 = "A1-" + "x" * 29
KEY_A2 = "A2-" + "y" * 29
KEY_B1 = "B1-" + "z" * 29
REAL_COMPARE = hmac.compare_digest
DOCUMENT = {"acct-a": [KEY_A1, KEY_A2], "acct-b": [KEY_B1], "acct-disabled": []}


def write(tmp_path: Path, content: str, mode: int = 0o600) -> Path:
    path = tmp_path / "write-keys.json"
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_good_file_authenticates_each_key_as_its_account(tmp_path: Path) -> None:
    keys = WriteKeys.load(write(tmp_path, json.dumps(DOCUMENT)))

    assert keys.authenticate(KEY_A1) == "acct-a"
    assert keys.authenticate(KEY_A2) == "acct-a"
    assert keys.authenticate(KEY_B1) == "acct-b"
    assert keys.accounts == {"acct-a", "acct-b", "acct-disabled"}
    assert len(keys) == 3


@pytest.mark.parametrize("presented", ["", KEY_A1[:-1], KEY_A1 + "x", KEY_A1.upper(), "ä€\x00"])
def test_anything_but_a_listed_key_is_unknown(presented: str) -> None:
    assert WriteKeys(DOCUMENT).authenticate(presented) is None


def test_a_missing_file_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "keys.json"

    with pytest.raises(ConfigurationError, match="does not exist") as caught:
        WriteKeys.load(missing)

    assert str(missing) in str(caught.value)
    assert caught.value.exit_code == 2


def test_invalid_json_names_the_file_and_position_but_never_the_content(tmp_path: Path) -> None:
    path = write(tmp_path, '{"acct-a": ["' + KEY_A1 + '"],\n  oops}')

    with pytest.raises(ConfigurationError) as caught:
        WriteKeys.load(path)

    message = str(caught.value)
    assert str(path) in message
    assert "not valid JSON (line 2, column 3)" in message
    assert KEY_A1 not in message


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (["acct-a", KEY_A1], "must hold a JSON object"),
        ({"acct-a": KEY_A1}, "keys of account 'acct-a' must be a JSON array"),
        ({"acct-a": [KEY_A1, 7]}, "key #2 of account 'acct-a' must be a string"),
        ({"acct-a": ["short-key"]}, "key #1 of account 'acct-a' has 9 characters"),
        ({"acct-a": [KEY_A1 + " x"]}, "key #1 of account 'acct-a' may only hold"),
        ({"acct a": [KEY_A1]}, "account id 'acct a' must be 1 to 128 printable ASCII"),
        ({"acct-a": [KEY_A1], "acct-b": [KEY_A1]}, "also listed for account 'acct-a'"),
        ({"acct-a": [KEY_A1, KEY_A1]}, "key #2 of account 'acct-a' is also listed"),
        ({}, "no write keys at all"),
        ({"acct-a": []}, "no write keys at all"),
    ],
)
def test_a_malformed_file_names_the_problem_but_never_a_key(
    tmp_path: Path, document: object, expected: str
) -> None:
    path = write(tmp_path, json.dumps(document))

    with pytest.raises(ConfigurationError) as caught:
        WriteKeys.load(path)

    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"write keys file {path}")
    assert KEY_A1 not in message


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(DOCUMENT), mode=0o644)

    with pytest.raises(ConfigurationError, match=r"mode 0644\); run `chmod 600"):
        WriteKeys.load(path)


def test_keys_never_show_and_never_pickle() -> None:
    keys = WriteKeys(DOCUMENT)

    shown = f"{keys!r} {keys}"
    assert shown == "WriteKeys(3 keys for 3 accounts) WriteKeys(3 keys for 3 accounts)"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keys)


class CompareSpy:
    """Records the arguments of every hmac.compare_digest call, then compares for real."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return REAL_COMPARE(a, b)


@pytest.mark.parametrize(
    ("presented", "account"),
    [(KEY_A1, "acct-a"), (KEY_B1, "acct-b"), ("wrong-" + "k" * 26, None), ("", None)],
    ids=["first-key", "last-key", "unknown", "empty"],
)
def test_every_key_is_compared_in_constant_time_whichever_matches(
    monkeypatch: pytest.MonkeyPatch, presented: str, account: str | None
) -> None:
    keys = WriteKeys(DOCUMENT)
    spy = CompareSpy()
    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)

    assert keys.authenticate(presented) == account

    # No early exit: a match on the first key costs as many comparisons as no match, and
    # every comparison is of two equal-length digests (compare_digest leaks lengths).
    assert len(spy.calls) == len(keys) == 3
    assert {(len(a), len(b)) for a, b in spy.calls} == {(32, 32)}
    assert len({b for _, b in spy.calls}) == 3  # each candidate once
