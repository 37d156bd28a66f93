"""Notifications when long work ends: a command to run and an e-mail (issue 14).

A run of several steps or a batch can take hours; whoever started it wants to know when it
is over without watching the window. This module (no Qt) knows two channels:

* **command**: a program the user names, run *without a shell* (so a session folder holding
  spaces or quotes cannot turn into another command) as ``PROGRAM ARGS... FOLDER STATUS``,
  with ``MPS_SESSION``, ``MPS_STATUS``, ``MPS_SUMMARY`` (and ``MPS_KIND``, ``MPS_DURATION_S``)
  in its environment. Its own time limit; its error output is kept for the message.
* **e-mail** through the SMTP server the user configures (host, port, security none /
  starttls / ssl, user, sender, recipients). The password is read when sending from an
  environment variable or the system keyring (service ``mps-smtp``, user name = the SMTP
  user); it is never written to the settings file, parameter files or session folders.

The desktop app adds a third, the system-tray message (``mps_gui.notify_dialog``).

Settings live in ``notifications.json`` in the user's configuration folder
(:func:`config_dir`; ``MPS_CONFIG_DIR`` overrides it, which the tests use). Sending never
raises: :func:`notify` returns one :class:`Outcome` per channel with a message a person can
act on (which host:port could not be reached, which program failed and what it said).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Sequence

log = logging.getLogger("mps")

SETTINGS_NAME = "notifications.json"
CONFIG_ENV = "MPS_CONFIG_DIR"
KEYRING_SERVICE = "mps-smtp"
DEFAULT_PASSWORD_ENV = "MPS_SMTP_PASSWORD"
SECURITY = ("none", "starttls", "ssl")
STATUSES = ("done", "failed", "cancelled")
KINDS = ("run", "batch", "test")
_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUMMARY_ENV_LIMIT = 2000  # environment blocks have size limits (Windows: 32 767 characters)


# ----------------------------------------------------------------------------- settings


@dataclass
class CommandSettings:
    """The program run at the end (no shell): PROGRAM ARGS... FOLDER STATUS."""

    enabled: bool = False
    program: str = ""
    args: list[str] = field(default_factory=list)
    timeout_s: float = 60.0


@dataclass
class EmailSettings:
    """The SMTP server and the addresses; the password is looked up when sending."""

    enabled: bool = False
    host: str = ""
    port: int = 587
    security: str = "starttls"
    user: str = ""
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    password_env: str = DEFAULT_PASSWORD_ENV
    use_keyring: bool = False
    timeout_s: float = 30.0


@dataclass
class NotifySettings:
    """Which endings to report and through which channels (the tray is the app's)."""

    on_done: bool = True
    on_failed: bool = True
    on_cancelled: bool = True
    tray: bool = True
    command: CommandSettings = field(default_factory=CommandSettings)
    email: EmailSettings = field(default_factory=EmailSettings)

    def wants(self, status: str) -> bool:
        """True when an ending with this status should be reported."""
        return {"done": self.on_done, "failed": self.on_failed,
                "cancelled": self.on_cancelled}.get(status, True)

    def any_channel(self) -> bool:
        return self.command.enabled or self.email.enabled

    def to_dict(self) -> dict:
        """Plain data for the JSON file; there is no password field to write."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "notification settings") -> "NotifySettings":
        """Build from JSON data; unknown keys and wrong types raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        top = _pick(cls, data, source, nested=("command", "email"))
        top["command"] = CommandSettings(**_pick(CommandSettings, data.get("command", {}),
                                                 f"{source}: command"))
        top["email"] = EmailSettings(**_pick(EmailSettings, data.get("email", {}),
                                             f"{source}: email"))
        return cls(**top)


def _pick(kind, data, source: str, nested: tuple[str, ...] = ()) -> dict:
    """The keys of `data` that are fields of dataclass `kind`, type-checked."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    out = {}
    for key, value in data.items():
        if key == "password":
            raise ValueError(f"{source}: 'password' is not read from this file (it would be "
                             f"readable by anyone who can read it): put it in the environment "
                             f"variable named by 'password_env', or in the system keyring")
        if key not in fields:
            raise ValueError(f"{source}: unknown key {key!r}; allowed keys are "
                             + ", ".join(fields))
        if key in nested:
            continue
        out[key] = _typed(value, fields[key], f"{source}: {key}")
    return out


def _typed(value, f: dataclasses.Field, where: str):
    """Check one JSON value against a field's declared type (JSON has no int/float split)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{where} = {value!r}: expected {_type_words(default)}")
    return value


def _type_words(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, list):
        return "a list of strings"
    return "a string"


def validate(settings: NotifySettings, check_program: bool = True) -> list[str]:
    """Every problem of the enabled channels, one line each naming the field (empty: fine)."""
    problems = []
    c, e = settings.command, settings.email
    if c.enabled:
        if not c.program.strip():
            problems.append("command.program is empty: name the program to run")
        elif check_program and find_program(c.program) is None:
            problems.append(f"command.program {c.program!r}: no such executable file "
                            f"(give its full path, or a program on the PATH)")
        if not c.timeout_s > 0:
            problems.append(f"command.timeout_s = {c.timeout_s}: give more than 0 seconds")
    if e.enabled:
        if not e.host.strip():
            problems.append("email.host is empty: give the SMTP server, e.g. smtp.example.org")
        if not 1 <= e.port <= 65535:
            problems.append(f"email.port = {e.port}: allowed 1 to 65535 (usually 587 for "
                            f"starttls, 465 for ssl, 25 for none)")
        if e.security not in SECURITY:
            problems.append(f"email.security = {e.security!r}: allowed "
                            + ", ".join(SECURITY))
        if not e.recipients:
            problems.append("email.recipients is empty: give at least one address")
        for r in e.recipients:
            if not _EMAIL.match(r):
                problems.append(f"email.recipients: {r!r} does not look like an e-mail "
                                f"address (name@example.org)")
        sender = e.sender or e.user
        if not _EMAIL.match(sender or ""):
            problems.append(f"email.sender {sender!r} does not look like an e-mail address; "
                            f"give the From address (or an SMTP user that is one)")
        if e.password_env and not _ENV_NAME.match(e.password_env):
            problems.append(f"email.password_env {e.password_env!r} is not an environment "
                            f"variable name (letters, digits and _)")
        if e.use_keyring and not e.user:
            problems.append("email.use_keyring needs email.user (the keyring entry is "
                            "stored under the SMTP user name)")
        if not e.timeout_s > 0:
            problems.append(f"email.timeout_s = {e.timeout_s}: give more than 0 seconds")
    return problems


def find_program(program: str) -> str | None:
    """The full path of an executable `program` (a path, or a name on the PATH), else None."""
    p = Path(program).expanduser()
    if p.parent != Path(".") or p.is_absolute():
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(program)


# ----------------------------------------------------------------------------- the file


def config_dir() -> Path:
    """The user's configuration folder for MPS (``MPS_CONFIG_DIR`` wins when set)."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform.startswith("win"):
        return Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "MPS"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "MPS"
    return Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "mps"


def settings_path() -> Path:
    return config_dir() / SETTINGS_NAME


def load_settings(path: Path | None = None) -> NotifySettings:
    """The saved settings (defaults, every channel off, when there is no file)."""
    path = Path(path) if path is not None else settings_path()
    if not path.exists():
        return NotifySettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    return NotifySettings.from_dict(data, source=str(path))


def save_settings(settings: NotifySettings, path: Path | None = None) -> Path:
    """Write the settings (atomically, readable by the user only); never a password."""
    path = Path(path) if path is not None else settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings.to_dict(), indent=2) + "\n", encoding="utf-8")
    if os.name == "posix":
        os.chmod(tmp, 0o600)  # addresses and server names are nobody else's business
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- passwords


class PasswordError(RuntimeError):
    """No password could be found; the message says where it was looked for."""


def _keyring():
    try:
        import keyring
        import keyring.errors
    except ImportError as e:  # pragma: no cover -- keyring is a dependency
        raise PasswordError(f"the keyring package is not installed ({e})") from None
    return keyring


def smtp_password(email: EmailSettings) -> str | None:
    """The SMTP password: the environment variable first, then the keyring; None when no
    user is set (the server takes mail without login)."""
    if email.password_env and os.environ.get(email.password_env):
        return os.environ[email.password_env]
    if not email.user:
        return None
    where = []
    if email.password_env:
        where.append(f"the environment variable {email.password_env} is not set")
    if email.use_keyring:
        kr = _keyring()
        try:
            value = kr.get_password(KEYRING_SERVICE, email.user)
        except kr.errors.KeyringError as e:
            where.append(f"the system keyring is not available ({_first_line(e)})")
        else:
            if value:
                return value
            where.append(f"the keyring has no password for {email.user!r} "
                         f"(service {KEYRING_SERVICE!r})")
    else:
        where.append("the keyring is not used (use_keyring is off)")
    raise PasswordError("no SMTP password: " + "; ".join(where))


def store_password(user: str, password: str) -> None:
    """Save the SMTP password in the system keyring (ValueError with the reason if not)."""
    if not user:
        raise ValueError("email.user is empty: the keyring stores the password under the "
                         "SMTP user name")
    kr = _keyring()
    try:
        kr.set_password(KEYRING_SERVICE, user, password)
    except kr.errors.KeyringError as e:
        raise ValueError(f"the system keyring is not available ({_first_line(e)}); set the "
                         f"password in an environment variable instead") from None


# ----------------------------------------------------------------------------- events


@dataclass
class Event:
    """One ending to report.

    kind: run | batch | test. folder: the session folder (a batch: the folder of its summary
    table). status: done | failed | cancelled (test: "test"). summary: one line; details:
    more lines for the e-mail (a batch's table); duration_s: how long the work took."""

    kind: str
    folder: Path
    status: str
    summary: str
    duration_s: float = 0.0
    details: str = ""

    @property
    def subject(self) -> str:
        if self.kind == "test":
            return "MPS: test notification"
        return f"MPS {self.kind} {self.status}: {Path(self.folder).name}"

    def body(self) -> str:
        lines = [self.summary, "", f"Folder: {self.folder}"]
        if self.duration_s:
            lines.append(f"Duration: {format_duration(self.duration_s)}")
        lines.append(f"Computer: {socket.gethostname()}")
        lines.append(f"Finished: {time.strftime('%Y-%m-%d %H:%M:%S')}")
        if self.details:
            lines += ["", self.details]
        return "\n".join(lines) + "\n"


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def batch_event(outcomes: Sequence, summary: Path | None = None) -> Event:
    """The ending of a batch from its session outcomes (`mps_core.batch.SessionOutcome`).

    Status: failed if a session failed, else cancelled if one was, else done. Folder: the
    summary table's folder, else the folder holding the sessions' output folders."""
    from .batch import counts, format_table

    c = counts(outcomes)
    status = "failed" if c.get("failed") else "cancelled" if c.get("cancelled") else "done"
    folder = Path(summary).parent if summary is not None else _common_folder(
        [o.entry.output_dir for o in outcomes if o.entry.output_dir is not None])
    line = f"batch of {len(outcomes)} session(s): " + ", ".join(f"{n} {k}" for k, n in c.items())
    causes = [f"{o.entry.name}: step {o.failed_step}: {o.cause}" if o.failed_step
              else f"{o.entry.name}: {o.cause}" for o in outcomes if o.status == "failed"]
    details = format_table(outcomes) + ("\n\nFailures:\n" + "\n".join(causes) if causes else "")
    return Event("batch", folder, status, line, sum(o.duration_s for o in outcomes), details)


def _common_folder(paths: list) -> Path:
    if not paths:
        return Path.cwd()
    try:
        return Path(os.path.commonpath([str(Path(p).absolute().parent) for p in paths]))
    except ValueError:  # different drives (Windows)
        return Path(paths[0]).parent


# ----------------------------------------------------------------------------- sending


@dataclass
class Outcome:
    """What one channel did: ok, and a message for the log or the settings dialog."""

    channel: str      # command | email | tray
    ok: bool
    message: str

    def line(self) -> str:
        return f"{self.channel}: {'sent' if self.ok else 'FAILED'} -- {self.message}"


def notify(event: Event, settings: NotifySettings) -> list[Outcome]:
    """Report `event` through every enabled channel; never raises.

    Nothing is sent for a status the settings do not want (an empty list)."""
    if event.kind != "test" and not settings.wants(event.status):
        return []
    out = []
    if settings.command.enabled:
        out.append(_guard("command", run_command, event, settings.command))
    if settings.email.enabled:
        out.append(_guard("email", send_email, event, settings.email))
    for o in out:
        (log.info if o.ok else log.warning)("notification %s", o.line())
    return out


def send_test(settings: NotifySettings, folder: Path | None = None) -> list[Outcome]:
    """A test notification through every enabled channel (status "test")."""
    event = Event("test", Path(folder) if folder is not None else config_dir(), "test",
                  "This is a test notification from MPS: the settings work.")
    return notify(event, settings)


def _guard(channel: str, fn, event: Event, cfg) -> Outcome:
    """Run one channel; anything unexpected becomes a failed outcome, not an exception."""
    try:
        return fn(event, cfg)
    except Exception as e:  # noqa: BLE001 -- a notification must never break the run's end
        return Outcome(channel, False, f"{type(e).__name__}: {e}")


def hook_environment(event: Event) -> dict[str, str]:
    """The variables the command receives on top of the current environment."""
    summary = event.summary if len(event.summary) <= SUMMARY_ENV_LIMIT \
        else event.summary[:SUMMARY_ENV_LIMIT - 3] + "..."
    return {"MPS_SESSION": str(event.folder), "MPS_STATUS": event.status,
            "MPS_SUMMARY": summary, "MPS_KIND": event.kind,
            "MPS_DURATION_S": f"{event.duration_s:.1f}"}


def run_command(event: Event, cfg: CommandSettings) -> Outcome:
    """Run PROGRAM ARGS... FOLDER STATUS without a shell, within cfg.timeout_s."""
    problems = validate(NotifySettings(command=cfg))
    if problems:
        return Outcome("command", False, "; ".join(problems))
    argv = [find_program(cfg.program) or cfg.program, *cfg.args, str(event.folder), event.status]
    env = {**os.environ, **hook_environment(event)}
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        return Outcome("command", False, f"{cfg.program} did not finish within "
                                         f"{cfg.timeout_s:g} s and was stopped")
    except OSError as e:
        return Outcome("command", False, f"cannot start {cfg.program}: {e.strerror or e}")
    if done.returncode != 0:
        err = _last_lines(done.stderr) or "(no error output)"
        return Outcome("command", False, f"{cfg.program} exited with code {done.returncode}: "
                                         f"{err}")
    return Outcome("command", True, f"{cfg.program} ran (exit code 0)")


def build_message(event: Event, cfg: EmailSettings) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = event.subject
    msg["From"] = cfg.sender or cfg.user
    msg["To"] = ", ".join(cfg.recipients)
    msg.set_content(event.body())
    return msg


def send_email(event: Event, cfg: EmailSettings) -> Outcome:
    """Send the e-mail; every failure is a message naming host:port and what to check."""
    problems = validate(NotifySettings(email=cfg))
    if problems:
        return Outcome("email", False, "; ".join(problems))
    where = f"{cfg.host}:{cfg.port}"
    try:
        password = smtp_password(cfg)
    except PasswordError as e:
        return Outcome("email", False, f"{where}: {e}")
    try:
        with _connect(cfg) as server:
            if cfg.security == "starttls":
                server.starttls(context=ssl.create_default_context())
            if cfg.user and password is not None:
                server.login(cfg.user, password)
            refused = server.send_message(build_message(event, cfg))
    except smtplib.SMTPAuthenticationError as e:
        return Outcome("email", False, f"{where} refused the user name or password for "
                                       f"{cfg.user!r} ({e.smtp_code} {_decode(e.smtp_error)})")
    except smtplib.SMTPNotSupportedError as e:
        return Outcome("email", False, f"{where}: the server does not support this ({e}); "
                                       f"check the security setting (starttls / ssl / none) "
                                       f"and whether it needs a login")
    except smtplib.SMTPRecipientsRefused as e:
        return Outcome("email", False, f"{where} refused the recipients: "
                                       + ", ".join(e.recipients))
    except smtplib.SMTPSenderRefused as e:
        return Outcome("email", False, f"{where} refused the sender {e.sender!r} "
                                       f"({e.smtp_code} {_decode(e.smtp_error)})")
    except smtplib.SMTPException as e:
        return Outcome("email", False, f"{where}: SMTP error: {e}")
    except ssl.SSLError as e:
        return Outcome("email", False, f"{where}: TLS failed ({e.reason or e}); port 465 "
                                       f"usually means ssl, 587 starttls")
    except (socket.timeout, TimeoutError):
        return Outcome("email", False, f"cannot reach {where}: no answer within "
                                       f"{cfg.timeout_s:g} s")
    except OSError as e:
        return Outcome("email", False, f"cannot reach {where}: {e.strerror or e}")
    if refused:
        return Outcome("email", False, f"{where} refused " + ", ".join(refused))
    return Outcome("email", True, f"sent to {', '.join(cfg.recipients)} via {where}")


def _connect(cfg: EmailSettings) -> smtplib.SMTP:
    if cfg.security == "ssl":
        return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s,
                                context=ssl.create_default_context())
    return smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)


def _decode(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[:500]
