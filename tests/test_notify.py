"""Notifications at the end of long work (mps_core.notify and `mps ... --notify`).

A real SMTP server (aiosmtpd on 127.0.0.1, a free port) receives the e-mails, with and
without login; the command hook is a small Python script that writes what it received.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from mps_core import notify as nt

aiosmtpd = pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

SECRET = "s3cret-pa55"
# the login test server runs without TLS on purpose (localhost only); aiosmtpd warns per session
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self):
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd name)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              f"Subject: {msg['Subject']}\n{msg.get_content()}"))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_login(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"lab" \
        and auth_data.password == SECRET.encode()
    return AuthResult(success=ok, handled=False)   # not handled: the server answers 535


@pytest.fixture
def smtp():
    """A plain SMTP server on localhost: (inbox, port)."""
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    yield inbox, ctl.port
    ctl.stop()


@pytest.fixture
def smtp_auth():
    """An SMTP server that requires a login (lab / SECRET), without TLS for the test."""
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port(), authenticator=_check_login,
                     auth_required=True, auth_require_tls=False)
    ctl.start()
    yield inbox, ctl.port
    ctl.stop()


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("MPS_CONFIG_DIR", str(folder))
    monkeypatch.delenv("MPS_SMTP_PASSWORD", raising=False)
    return folder


def _email(port: int, **kw) -> nt.EmailSettings:
    base = dict(enabled=True, host="127.0.0.1", port=port, security="none",
                sender="mps@lab.example.org", recipients=["me@lab.example.org"], timeout_s=10.0)
    return nt.EmailSettings(**{**base, **kw})


def _hook(tmp_path: Path, exit_code: int = 0) -> Path:
    """A script that writes its argv and MPS_* environment to record.json."""
    record = tmp_path / "record.json"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], "
        "'env': {k: v for k, v in os.environ.items() if k.startswith('MPS_')}}))\n"
        f"if {exit_code}:\n"
        "    sys.stderr.write('disk full\\n')\n"
        f"    sys.exit({exit_code})\n")
    return script


def _command(script: Path, **kw) -> nt.CommandSettings:
    return nt.CommandSettings(enabled=True, program=sys.executable,
                              args=[str(script), "--tag", "a b"], **kw)


def _event(folder: Path, status: str = "done") -> nt.Event:
    return nt.Event("run", folder, status, "ran steps 1..8c in 12.0 s", duration_s=12.0)


# ----------------------------------------------------------------------------- e-mail


def test_email_reaches_a_local_smtp_server(smtp, tmp_path):
    inbox, port = smtp
    folder = tmp_path / "session with space"
    out = nt.notify(_event(folder, "failed"), nt.NotifySettings(email=_email(port)))
    assert [(o.channel, o.ok) for o in out] == [("email", True)], out
    assert f"127.0.0.1:{port}" in out[0].message
    assert len(inbox.messages) == 1
    sender, rcpts, text = inbox.messages[0]
    assert sender == "mps@lab.example.org" and rcpts == ["me@lab.example.org"]
    assert "Subject: MPS run failed: session with space" in text
    assert "ran steps 1..8c in 12.0 s" in text and str(folder) in text
    assert "Duration: 12.0 s" in text


def test_password_from_the_environment_is_used_to_log_in(smtp_auth, monkeypatch, tmp_path):
    inbox, port = smtp_auth
    cfg = _email(port, user="lab", password_env="LAB_SMTP_PW")
    # no password anywhere: a clear message, nothing sent
    out = nt.notify(_event(tmp_path), nt.NotifySettings(email=cfg))
    assert not out[0].ok and "LAB_SMTP_PW is not set" in out[0].message
    monkeypatch.setenv("LAB_SMTP_PW", "wrong")
    out = nt.notify(_event(tmp_path), nt.NotifySettings(email=cfg))
    assert not out[0].ok and "refused the user name or password" in out[0].message
    assert f"127.0.0.1:{port}" in out[0].message
    monkeypatch.setenv("LAB_SMTP_PW", SECRET)
    out = nt.notify(_event(tmp_path), nt.NotifySettings(email=cfg))
    assert out[0].ok, out[0].message
    assert len(inbox.messages) == 1
    # the password reached the server but never the settings file
    path = nt.save_settings(nt.NotifySettings(email=cfg))
    assert SECRET not in path.read_text() and "password\"" not in path.read_text()


def test_keyring_without_a_backend_is_a_message_not_a_crash(tmp_path):
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    try:
        cfg = _email(_free_port(), user="lab", use_keyring=True)
        out = nt.send_email(_event(tmp_path), cfg)
        assert not out.ok and "keyring is not available" in out.message
        with pytest.raises(ValueError, match="keyring is not available"):
            nt.store_password("lab", "x")
    finally:
        keyring.set_keyring(previous)


def test_keyring_password_is_looked_up_under_the_user(monkeypatch):
    import keyring
    from keyring.backend import KeyringBackend

    class Memory(KeyringBackend):
        priority = 1
        store: dict = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(Memory())
    try:
        nt.store_password("lab", SECRET)
        assert Memory.store == {("mps-smtp", "lab"): SECRET}
        cfg = nt.EmailSettings(user="lab", use_keyring=True)
        assert nt.smtp_password(cfg) == SECRET
        monkeypatch.setenv("MPS_SMTP_PASSWORD", "from-env")   # the environment goes first
        assert nt.smtp_password(cfg) == "from-env"
    finally:
        keyring.set_keyring(previous)


def test_unreachable_server_names_host_and_port(tmp_path):
    port = _free_port()   # nothing listens there
    out = nt.notify(_event(tmp_path), nt.NotifySettings(email=_email(port, timeout_s=3.0)))
    assert len(out) == 1 and not out[0].ok
    assert f"cannot reach 127.0.0.1:{port}" in out[0].message


def test_starttls_refused_by_a_plain_server_is_explained(smtp, tmp_path):
    _, port = smtp
    out = nt.send_email(_event(tmp_path), _email(port, security="starttls"))
    assert not out.ok and f"127.0.0.1:{port}" in out.message
    assert "security" in out.message


# ----------------------------------------------------------------------------- the hook


def test_command_hook_receives_folder_status_and_summary(tmp_path):
    script = _hook(tmp_path)
    folder = tmp_path / "my session; rm -rf x"   # no shell: the name is just an argument
    out = nt.notify(_event(folder, "cancelled"), nt.NotifySettings(command=_command(script)))
    assert [(o.channel, o.ok) for o in out] == [("command", True)], out
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["argv"] == ["--tag", "a b", str(folder), "cancelled"]
    assert rec["env"]["MPS_SESSION"] == str(folder)
    assert rec["env"]["MPS_STATUS"] == "cancelled"
    assert rec["env"]["MPS_SUMMARY"] == "ran steps 1..8c in 12.0 s"
    assert rec["env"]["MPS_KIND"] == "run" and rec["env"]["MPS_DURATION_S"] == "12.0"


def test_failing_hook_gives_its_error_output_and_does_not_raise(tmp_path):
    out = nt.notify(_event(tmp_path), nt.NotifySettings(command=_command(_hook(tmp_path, 3))))
    assert not out[0].ok
    assert "exited with code 3" in out[0].message and "disk full" in out[0].message


def test_slow_hook_is_stopped_at_its_time_limit(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(30)\n")
    cfg = nt.CommandSettings(enabled=True, program=sys.executable, args=[str(script)],
                             timeout_s=0.5)
    out = nt.run_command(_event(tmp_path), cfg)
    assert not out.ok and "did not finish within 0.5 s" in out.message


def test_missing_program_is_reported_by_name(tmp_path):
    cfg = nt.CommandSettings(enabled=True, program=str(tmp_path / "no-such-program"))
    out = nt.notify(_event(tmp_path), nt.NotifySettings(command=cfg))
    assert not out[0].ok and "no-such-program" in out[0].message
    assert "no such executable" in out[0].message


def test_statuses_not_wanted_send_nothing_and_test_sends_anyway(tmp_path):
    script = _hook(tmp_path)
    s = nt.NotifySettings(on_done=False, command=_command(script))
    assert nt.notify(_event(tmp_path, "done"), s) == []
    assert not (tmp_path / "record.json").exists()
    out = nt.send_test(s, folder=tmp_path)
    assert out[0].ok
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["argv"][-1] == "test" and rec["env"]["MPS_KIND"] == "test"


def test_both_channels_report_each_their_outcome(smtp, tmp_path):
    inbox, port = smtp
    s = nt.NotifySettings(command=_command(_hook(tmp_path, 2)), email=_email(port))
    out = nt.notify(_event(tmp_path), s)
    assert [(o.channel, o.ok) for o in out] == [("command", False), ("email", True)]
    assert len(inbox.messages) == 1


# ----------------------------------------------------------------------------- settings


def test_settings_round_trip_in_the_config_folder(config_dir, smtp):
    _, port = smtp
    s = nt.NotifySettings(on_cancelled=False, tray=False,
                          command=nt.CommandSettings(True, sys.executable, ["x"], 5.0),
                          email=_email(port, user="lab", use_keyring=True))
    path = nt.save_settings(s)
    assert path == config_dir / "notifications.json"
    assert nt.load_settings() == s
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert nt.load_settings(config_dir / "absent.json") == nt.NotifySettings()


def test_config_dir_follows_the_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("MPS_CONFIG_DIR")
    monkeypatch.setattr(nt.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert nt.config_dir() == tmp_path / "xdg" / "mps"
    monkeypatch.setattr(nt.sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    assert nt.config_dir() == tmp_path / "roaming" / "MPS"
    monkeypatch.setattr(nt.sys, "platform", "darwin")
    assert nt.config_dir().parts[-2:] == ("Application Support", "MPS")


@pytest.mark.parametrize("data, match", [
    ({"email": {"password": "x"}}, "'password' is not read from this file"),
    ({"email": {"prot": 25}}, "unknown key 'prot'"),
    ({"email": {"port": "25"}}, "email: port = '25': expected a whole number"),
    ({"on_done": "yes"}, "on_done = 'yes': expected true or false"),
    ({"command": {"args": "a b"}}, "command: args = 'a b': expected a list of strings"),
])
def test_bad_settings_files_name_the_key(config_dir, data, match):
    config_dir.mkdir(parents=True)
    (config_dir / "notifications.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as e:
        nt.load_settings()
    assert "notifications.json" in str(e.value)


def test_not_json_is_one_line(config_dir):
    config_dir.mkdir(parents=True)
    (config_dir / "notifications.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        nt.load_settings()


def test_validation_names_each_field(tmp_path):
    s = nt.NotifySettings(
        command=nt.CommandSettings(enabled=True, program=""),
        email=nt.EmailSettings(enabled=True, host="", port=70000, security="tls",
                               recipients=["me@lab.org", "not an address"], sender="",
                               password_env="bad name", use_keyring=True))
    text = "\n".join(nt.validate(s))
    for phrase in ("command.program is empty", "email.host is empty",
                   "email.port = 70000: allowed 1 to 65535", "email.security = 'tls'",
                   "'not an address' does not look like an e-mail", "email.sender",
                   "email.password_env 'bad name'", "email.use_keyring needs email.user"):
        assert phrase in text, (phrase, text)
    assert nt.validate(nt.NotifySettings()) == []   # channels off: nothing to check


def test_batch_event_sums_up_the_sessions(tmp_path):
    from mps_core.batch import SessionEntry, SessionOutcome

    outs = [SessionOutcome(SessionEntry(tmp_path / "a", tmp_path / "out" / "a"), "done", 10.0),
            SessionOutcome(SessionEntry(tmp_path / "b", tmp_path / "out" / "b"), "failed", 5.0,
                           failed_step="2a", cause="no videos")]
    ev = nt.batch_event(outs)
    assert ev.kind == "batch" and ev.status == "failed" and ev.duration_s == 15.0
    assert ev.folder == tmp_path / "out"
    assert "1 done, 1 failed" in ev.summary and "step 2a: no videos" in ev.details
    assert nt.batch_event(outs[:1], tmp_path / "sum" / "s.csv").folder == tmp_path / "sum"


# ----------------------------------------------------------------------------- the CLI


def test_mps_notify_test_and_run_notify(smtp, tmp_path, capsys):
    from mps_core.cli import main

    inbox, port = smtp
    assert main(["notify-test"]) == 1            # nothing configured yet: says so
    assert "no notification channel is enabled" in capsys.readouterr().err
    nt.save_settings(nt.NotifySettings(command=_command(_hook(tmp_path)), email=_email(port)))
    assert main(["notify-test"]) == 0
    out = capsys.readouterr().out
    assert "email: sent" in out and "command: sent" in out
    assert len(inbox.messages) == 1 and "MPS: test notification" in inbox.messages[0][2]
    # a run that fails at step 1 (no recording) still tells, with status failed
    session = tmp_path / "session"
    (tmp_path / "empty").mkdir()
    code = main(["run", "--input", str(tmp_path / "empty"), "--output", str(session),
                 "--to", "2a", "--quiet", "--notify"])
    assert code != 0
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["argv"][-2:] == [str(session), "failed"]
    assert len(inbox.messages) == 2 and "MPS run failed: session" in inbox.messages[1][2]
