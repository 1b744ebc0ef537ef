"""Where configuration lives: our own config dir, and open-iscsi's (read, never written).

``default_config_dir()`` is the one answer for every command and every mount: node records,
discovery records, iscsid.conf and initiatorname.iscsi live there, never in /etc/iscsi.
"""

from __future__ import annotations

import os

OPEN_ISCSI_DIR = "/etc/iscsi"       # read (never written) with -o open_iscsi


def _location(env: str, as_root: str, xdg: str, xdg_default: str | None) -> str:
    """$``env``, else ``as_root`` for root, else $``xdg``/iscsifs (``xdg_default`` when the
    variable is unset; with no default, "" means "no such place")."""
    value = os.environ.get(env)
    if value:
        return value
    if os.geteuid() == 0:
        return as_root
    base = os.environ.get(xdg) or (os.path.expanduser(xdg_default) if xdg_default else "")
    return os.path.join(base, "iscsifs") if base else ""


def default_config_dir() -> str:
    """$ISCSIFS_CONFIG_DIR, else /etc/iscsifs for root, else $XDG_CONFIG_HOME/iscsifs
    (~/.config/iscsifs)."""
    return _location("ISCSIFS_CONFIG_DIR", "/etc/iscsifs", "XDG_CONFIG_HOME", "~/.config")


# -------------------------------------------------------------- logs and runtime state
def escape_path(path: str) -> str:
    """A mount point as one file name, the way ``systemd-escape --path`` writes it:
    ``/mnt/san`` -> ``mnt-san``, ``/`` -> ``-``; ``/`` inside becomes ``-``, and ``-``, a
    leading ``.`` of the name and every byte outside ``[A-Za-z0-9:_.]`` become ``\\xNN``."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, part in enumerate(parts):
        text = []
        for j, byte in enumerate(part.encode("utf-8", "surrogateescape")):
            ch = chr(byte)
            if (ch.isascii() and (ch.isalnum() or ch in ":_.")) and not (ch == "." and i == j == 0):
                text.append(ch)
            else:
                text.append(f"\\x{byte:02x}")
        out.append("".join(text))
    return "-".join(out)


def default_log_dir() -> str:
    """$ISCSIFS_LOG_DIR, else /var/log/iscsifs for root, else $XDG_STATE_HOME/iscsifs
    (~/.local/state/iscsifs)."""
    return _location("ISCSIFS_LOG_DIR", "/var/log/iscsifs", "XDG_STATE_HOME", "~/.local/state")


def default_log_file(mountpoint: str) -> str:
    """Where the mount daemon of ``mountpoint`` logs by default: LOG_DIR/<escaped>.log."""
    return os.path.join(default_log_dir(), escape_path(mountpoint) + ".log")


def default_run_dir() -> str:
    """State shared by every iscsifs process of this user while the machine runs (the session
    ID counter): $ISCSIFS_RUN_DIR, else /run/iscsifs for root, else $XDG_RUNTIME_DIR/iscsifs,
    else the log dir."""
    return _location("ISCSIFS_RUN_DIR", "/run/iscsifs", "XDG_RUNTIME_DIR", None) \
        or default_log_dir()
