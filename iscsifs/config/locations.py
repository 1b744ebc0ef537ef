"""Where configuration lives: our own config dir, and open-iscsi's (read, never written).

``default_config_dir()`` is the one answer for every command and every mount: node records,
discovery records, iscsid.conf and initiatorname.iscsi live there, never in /etc/iscsi.
"""

from __future__ import annotations

import os

OPEN_ISCSI_DIR = "/etc/iscsi"       # read (never written) with -o open_iscsi


def default_config_dir() -> str:
    """$ISCSIFS_CONFIG_DIR, else /etc/iscsifs for root, else $XDG_CONFIG_HOME/iscsifs
    (~/.config/iscsifs)."""
    env = os.environ.get("ISCSIFS_CONFIG_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/etc/iscsifs"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "iscsifs")


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
    env = os.environ.get("ISCSIFS_LOG_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/log/iscsifs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "iscsifs")


def default_log_file(mountpoint: str) -> str:
    """Where the mount daemon of ``mountpoint`` logs by default: LOG_DIR/<escaped>.log."""
    return os.path.join(default_log_dir(), escape_path(mountpoint) + ".log")


def default_run_dir() -> str:
    """State shared by every iscsifs process of this user while the machine runs (the session
    ID counter): $ISCSIFS_RUN_DIR, else /run/iscsifs for root, else $XDG_RUNTIME_DIR/iscsifs,
    else the log dir."""
    env = os.environ.get("ISCSIFS_RUN_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/iscsifs"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "iscsifs") if runtime else default_log_dir()
