"""The console's users: argon2id hashes (config/passwords.py), node.console in
the schema, what a reload applies of it, and ``segnode console add-user``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type

from config import ConfigError, parse_config, reloaded, restart_only_changes
from config.passwords import MAX_PASSWORD_CHARS, hash_password, verify_password
from tests.certificates import Authority

SEGNODE = Path(sys.executable).with_name("segnode")

HASH = hash_password("correct horse")

CONSOLE_FILE = """\
# a node with a console
node:
  port: 11112
  console:
    port: 8080          # the web console
peers: []
"""


def console_errors(console: str, *, check_files: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"node:\n  console:\n{console}", check_files=check_files)
    return caught.value.errors


def user(name: str, password_hash: str = HASH) -> str:
    return f"      - name: '{name}'\n        password_hash: '{password_hash}'\n"


def test_a_hash_verifies_its_password_only():
    assert HASH.startswith("$argon2id$v=19$")
    assert verify_password(HASH, "correct horse")
    assert not verify_password(HASH, "correct horse ")
    assert not verify_password(HASH, "")
    assert hash_password("correct horse") != HASH  # a fresh salt each time
    long = "x" * MAX_PASSWORD_CHARS
    assert verify_password(hash_password(long), long)
    assert not verify_password(hash_password(long), long + "x")


@pytest.mark.parametrize("password_hash", [
    "", "correct horse", "$argon2id$", "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
    HASH[:-10], HASH.replace("$v=19$", "$v=99$"), "é" + HASH,
    HASH[:-5] + ("A" if HASH[-5] != "A" else "B") + HASH[-4:],  # another hash: a wrong password's
])
def test_a_malformed_hash_verifies_nothing_and_raises_nothing(password_hash):
    assert verify_password(password_hash, "correct horse") is False


@pytest.mark.parametrize("password", ["", "x" * (MAX_PASSWORD_CHARS + 1)])
def test_empty_and_overlong_passwords_are_refused(password):
    with pytest.raises(ValueError, match="password"):
        hash_password(password)


def test_a_console_needs_a_port_and_defaults_to_the_loopback():
    config = parse_config("node:\n  console:\n    port: 8080\n")
    console = config.node.console
    assert (console.host, console.port, console.session_minutes) == ("127.0.0.1", 8080, 480)
    assert console.users == [] and console.certificate is None and console.private_key is None
    assert parse_config("node: {}\n").node.console is None
    assert console_errors("    host: 0.0.0.0\n") == ["node.console.port: Field required"]
    assert console_errors("    port: 8080\n    session_minutes: 4\n") == [
        "node.console.session_minutes: Input should be greater than or equal to 5"]
    assert console_errors("    port: 8080\n    session_minutes: 10081\n") == [
        "node.console.session_minutes: Input should be less than or equal to 10080"]


def test_users_with_their_hashes_are_read():
    users = user("alice") + user("b.o-b_2@x.org")
    config = parse_config("node:\n  console:\n    port: 8080\n    users:\n" + users)
    assert [(u.name, u.password_hash) for u in config.node.console.users] == [
        ("alice", HASH), ("b.o-b_2@x.org", HASH)]


@pytest.mark.parametrize("name", ["", "a" * 65, "two words", "<script>", "x;rm", "é"])
def test_a_bad_user_name_is_an_error_of_its_field(name):
    assert console_errors("    port: 8080\n    users:\n" + user(name)) == [
        "node.console.users[0].name: not 1 to 64 of the characters A-Z a-z 0-9 . _ @ -"]


@pytest.mark.parametrize("password_hash", [
    "correct horse",
    PasswordHasher(type=Type.I).hash("correct horse"),  # argon2, but not argon2id
    "$argon2id$v=19$m=65536,t=3,p=4$$",  # no salt, no hash
    "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
])
def test_anything_but_an_argon2id_hash_is_an_error_of_its_field(password_hash):
    assert console_errors("    port: 8080\n    users:\n" + user("alice", password_hash)) == [
        "node.console.users[0].password_hash: not an argon2id hash ($argon2id$...); make one with "
        "segnode console add-user"]


def test_a_name_listed_twice_is_named():
    assert console_errors("    port: 8080\n    users:\n" + user("alice") + user("bob") + user("alice")) == [
        "node.console.users: 'alice' is listed twice (users[2])"]


def test_https_needs_both_files_and_reads_them(tmp_path):
    credential = Authority(tmp_path / "ca").issue("console")
    assert console_errors(f"    port: 8443\n    certificate: {credential.certificate}\n") == [
        "node.console: certificate and private_key go together (HTTPS)"]
    assert console_errors(f"    port: 8443\n    private_key: {credential.key}\n") == [
        "node.console: certificate and private_key go together (HTTPS)"]
    both = f"    port: 8443\n    certificate: {credential.certificate}\n    private_key: {credential.key}\n"
    assert parse_config(f"node:\n  console:\n{both}").node.console.private_key == credential.key

    other = Authority(tmp_path / "other").issue("other")
    assert console_errors(f"    port: 8443\n    certificate: {credential.certificate}\n"
                          f"    private_key: {other.key}\n") == [
        "node.console.private_key: does not match node.console.certificate"]
    missing = both.replace(str(credential.certificate), str(tmp_path / "gone.crt"))
    assert console_errors(missing) == [f"node.console.certificate: {tmp_path / 'gone.crt'}: no such file"]
    # A reader of shape only (segnode status) does not open them.
    assert parse_config(f"node:\n  console:\n{missing}", check_files=False).node.console.port == 8443


def test_a_reload_applies_users_and_session_length_only():
    running = parse_config("node:\n  console:\n    port: 8080\n")
    new = parse_config("node:\n  console:\n    host: 0.0.0.0\n    port: 9090\n    session_minutes: 60\n"
                       "    users:\n" + user("alice"))
    assert [(c.field, c.in_force, c.in_file) for c in restart_only_changes(new, running)] == [
        ("node.console.host", "127.0.0.1", "0.0.0.0"), ("node.console.port", 8080, 9090)]
    effective = reloaded(new, running).node.console
    assert (effective.host, effective.port) == ("127.0.0.1", 8080)
    assert (effective.session_minutes, [u.name for u in effective.users]) == (60, ["alice"])

    without = parse_config("node: {}\n")
    assert [(c.field, c.in_force, c.in_file) for c in restart_only_changes(without, running)] == [
        ("node.console", "set", "none")]
    assert reloaded(without, running).node.console == running.node.console
    assert reloaded(running, without).node.console is None  # a console starts with the node only


def add_user_cli(config: Path, name: str, stdin: str) -> subprocess.CompletedProcess:
    command = [str(SEGNODE), "console", "add-user", "--config", str(config), name, "--password-stdin"]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)


def test_add_user_writes_a_hash_of_the_password(tmp_path):
    path = tmp_path / "segnode.yaml"
    path.write_text(CONSOLE_FILE)
    result = add_user_cli(path, "alice", "correct horse\n")
    assert result.returncode == 0, result.stderr
    assert "console user alice added" in result.stdout
    (alice,) = parse_config(path.read_text()).node.console.users
    assert alice.name == "alice"
    assert verify_password(alice.password_hash, "correct horse")
    assert not verify_password(alice.password_hash, "correct horse\n")
    assert "correct horse" not in path.read_text()
    assert path.read_text().startswith(CONSOLE_FILE.replace("peers: []\n", ""))  # comments kept

    result = add_user_cli(path, "alice", "battery staple\n")
    assert result.returncode == 0, result.stderr
    assert "password replaced" in result.stdout
    (alice,) = parse_config(path.read_text()).node.console.users
    assert verify_password(alice.password_hash, "battery staple")
    assert not verify_password(alice.password_hash, "correct horse")


@pytest.mark.parametrize(("text", "name", "stdin", "message"), [
    (CONSOLE_FILE, "two words", "pw\n", "the name 'two words' is not 1 to 64 of the characters"),
    (CONSOLE_FILE, "alice", "\n", "the password is empty"),
    ("node: {port: 11112}\n", "alice", "pw\n", "configures no console; add node.console.port first"),
    (CONSOLE_FILE.replace("port: 8080", "port: 80800"), "alice", "pw\n",
     "node.console.port: Input should be less than or equal to 65535"),
    ("peers: [unclosed\n", "alice", "pw\n", "not valid YAML"),
])
def test_add_user_refuses_and_changes_nothing(tmp_path, text, name, stdin, message):
    path = tmp_path / "segnode.yaml"
    path.write_text(text)
    result = add_user_cli(path, name, stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert path.read_text() == text


def test_add_user_says_which_file_it_cannot_read(tmp_path):
    result = add_user_cli(tmp_path / "missing.yaml", "alice", "pw\n")
    assert result.returncode == 1
    assert f"{tmp_path / 'missing.yaml'}: cannot read" in result.stderr
