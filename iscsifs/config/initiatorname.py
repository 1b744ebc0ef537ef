"""Initiator names: ``initiatorname.iscsi`` files and new names (open-iscsi's ``iscsi-iname``).

Owns: reading and writing ``initiatorname.iscsi`` (``InitiatorName=``, ``InitiatorAlias=``),
``iname()``, and ``choose_initiator_name`` / ``ensure_initiator_name``: the one rule for which
name a command or a mount uses (the one given, else ours, else open-iscsi's when asked, else a
new one, saved).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from iscsifs.config.conffile import atomic_write
from iscsifs.config.keys import validate_iscsi_name
from iscsifs.core.names import iscsi_name_problem, printable
from iscsifs.errors import ConfigError

DEFAULT_INAME_PREFIX = "iqn.2016-04.com.open-iscsi"   # iscsi-iname's default prefix


def iname(prefix: str = DEFAULT_INAME_PREFIX) -> str:
    """A new initiator name ``<prefix>:<12 hex digits>`` (open-iscsi's ``iscsi-iname -p``)."""
    if not prefix.lower().startswith("iqn."):
        raise ConfigError(f"prefix {printable(prefix)} must start with 'iqn.'")
    name = f"{prefix}:{secrets.token_hex(6)}"
    problem = iscsi_name_problem(name)
    if problem:
        raise ConfigError(f"prefix {printable(prefix)} gives an invalid name: {problem}")
    return name


def read_initiator_name(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(InitiatorName, InitiatorAlias or None)`` from an initiatorname.iscsi file."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", where) from None
    name = alias = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError("expected 'InitiatorName=...'", where, lineno)
        if key == "InitiatorName":
            problem = iscsi_name_problem(value)
            if problem:
                raise ConfigError(f"invalid InitiatorName: {problem}", where, lineno)
            name = value
        elif key == "InitiatorAlias":
            if any(ord(c) < 0x20 for c in value):
                raise ConfigError("InitiatorAlias contains control characters", where, lineno)
            alias = value or None
        else:
            raise ConfigError(f"unknown key {printable(key)}", where, lineno)
    if name is None:
        raise ConfigError("no InitiatorName= line", where)
    return name, alias


def write_initiator_name(path: str | os.PathLike[str], name: str,
                         alias: str | None = None) -> None:
    validate_iscsi_name(name, "initiator name")
    if alias is not None and any(ord(c) < 0x20 for c in alias):
        raise ConfigError("InitiatorAlias contains control characters")
    text = ("## iscsifs initiator name (open-iscsi initiatorname.iscsi format)\n"
            f"InitiatorName={name}\n")
    if alias:
        text += f"InitiatorAlias={alias}\n"
    atomic_write(Path(path), text, 0o600)


def ensure_initiator_name(config_dir: str | os.PathLike[str], *,
                          open_iscsi_dir: str | os.PathLike[str] | None = None,
                          prefix: str = DEFAULT_INAME_PREFIX) -> tuple[str, str | None]:
    """Our initiator name: ``<config_dir>/initiatorname.iscsi``; else (when ``open_iscsi_dir``
    is given and holds one) open-iscsi's; else a new name, generated and saved."""
    ours = Path(config_dir) / "initiatorname.iscsi"
    if ours.exists():
        return read_initiator_name(ours)
    if open_iscsi_dir is not None:
        theirs = Path(open_iscsi_dir) / "initiatorname.iscsi"
        if theirs.is_file() and os.access(theirs, os.R_OK):
            return read_initiator_name(theirs)
    name = iname(prefix)
    write_initiator_name(ours, name)
    return name, None



def choose_initiator_name(given: str | None, config_dir: str | os.PathLike[str], *,
                          option: str = "--initiator-name",
                          open_iscsi_dir: str | os.PathLike[str] | None = None
                          ) -> tuple[str, str | None]:
    """``(name, note)`` for a command or a mount: the name given (as ``option``), else
    CONFIG_DIR/initiatorname.iscsi, else open-iscsi's in ``open_iscsi_dir`` (when given), else
    a new name generated and saved in CONFIG_DIR (``note`` then says so). ConfigError (exit 7)
    for a bad name or an unusable config dir."""
    if given is not None:
        problem = iscsi_name_problem(given)
        if problem:
            raise ConfigError(f"bad {option} {printable(given)}: {problem}")
        return given, None
    path = os.path.join(config_dir, "initiatorname.iscsi")
    existed = os.path.exists(path)
    try:
        name, _alias = ensure_initiator_name(config_dir, open_iscsi_dir=open_iscsi_dir)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot save a new initiator name: "
                          f"{exc.strerror or exc}") from None
    note = None
    if not existed and os.path.exists(path):
        note = f"no initiator name configured: generated {name} and saved it in {path}"
    return name, note
