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
