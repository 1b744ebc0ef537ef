"""Extended attributes of a LUN's file (``raw``; the ``by-id`` files take the same functions).

Owns: the names and values of the read-only ``user.iscsi.*`` identity attributes (taken from
the same snapshot as ``info`` and ``info.json``: ``render.lun_facts``), the syntax of the
write-only ``user.iscsi.discard`` control, and what setting or removing each name answers.
The handlers in ``fs/ops.py`` only look the answer up here.

    user.iscsi.wwn          naa.60000000000000000e00000000010001   (absent if the LUN has none)
    user.iscsi.serial       beaf11                                 (absent if the LUN has none)
    user.iscsi.vendor       IET
    user.iscsi.product      VIRTUAL-DISK
    user.iscsi.revision     0001
    user.iscsi.block_size   512
    user.iscsi.target       iqn.2026-11.org.example:disk1
    user.iscsi.portal       10.0.0.5:3260 ([v6addr]:port for IPv6)
    user.iscsi.lun          1
    user.iscsi.discard      write-only: "OFFSET LENGTH" (decimal bytes) discards that range
    user.iscsi.pr.read_keys, .read_reservation, .report_capabilities, .read_full_status
                            get-only, not listed: PERSISTENT RESERVE IN through the mount's own
                            session, answered as JSON (schema iscsifs.pr/1, docs/json.md)
    user.iscsi.pr           write-only: PERSISTENT RESERVE OUT, "ACTION [key=HEX] [sa_key=HEX]
                            [type=N] [aptpl] [all_tg_pt]" (``iscsifs pr --out``)

A ``by-id`` file (a LUN over all its paths) has the same attributes, where target, portal and
LUN are those of the path that answered the last command (before the first one, the path the
next command goes to), and two more:

    user.iscsi.paths         2       how many paths the LUN has
    user.iscsi.paths_active  1       how many of them are healthy (logged in)

Values are ASCII text without a newline; anything else the target sent (control characters,
non-ASCII bytes) is escaped as ``\\xNN``. A value the LUN does not report is absent (ENODATA),
never empty. Setting or removing an identity attribute gets EPERM (they describe the LUN and
cannot be changed); any other name gets ENOTSUP on set (the file system keeps no extended
attributes of its own) and ENODATA on remove.

Must not know: pyfuse3, trio, sessions.
"""

from __future__ import annotations

import re

from iscsifs.core.names import Portal
from iscsifs.device import PrOut
from iscsifs.fs.backend import BlockDevice, MultipathBlockDevice
from iscsifs.fs.render import lun_facts
from iscsifs.scsi.cdb import MAX_KEY, PrInAction, PrOutAction

PREFIX = "user.iscsi."
PREFIX_BYTES = PREFIX.encode()
# (attribute, key of render.lun_facts), in the order listxattr gives them
IDENTITY = (
    ("wwn", "wwn"), ("serial", "serial"), ("vendor", "vendor"), ("product", "product"),
    ("revision", "revision"), ("block_size", "block_size"), ("target", "target"),
    ("portal", "portal"), ("lun", "lun"),
)
PATHS = (PREFIX + "paths").encode()
PATHS_ACTIVE = (PREFIX + "paths_active").encode()
IDENTITY_NAMES = frozenset((PREFIX + name).encode() for name, _ in IDENTITY) \
    | {PATHS, PATHS_ACTIVE}
DISCARD = (PREFIX + "discard").encode()
# persistent reservations: a get per PERSISTENT RESERVE IN service action, a set for OUT
PR_IN = {(PREFIX + "pr." + action.name.lower()).encode(): action for action in PrInAction}
PR_OUT = (PREFIX + "pr").encode()
PR_OUT_ACTIONS = {
    "register": PrOutAction.REGISTER, "reserve": PrOutAction.RESERVE,
    "release": PrOutAction.RELEASE, "clear": PrOutAction.CLEAR,
    "preempt": PrOutAction.PREEMPT, "preempt_abort": PrOutAction.PREEMPT_AND_ABORT,
    "register_ignore": PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY,
}

_DISCARD_RE = re.compile(rb"\s*(\d{1,20})\s+(\d{1,20})\s*")


def _text(value: object) -> bytes:
    """One line of printable ASCII (render.clean already escaped control characters)."""
    return str(value).encode("ascii", "backslashreplace")


def lun_xattrs(device: BlockDevice, target: str | None, portal: Portal | None,
               lun: int) -> dict[bytes, bytes]:
    """The identity attributes of a LUN's file, name -> value, in listing order."""
    facts = lun_facts(device, lun=lun, target=target, portal=portal)
    out: dict[bytes, bytes] = {}
    for name, key in IDENTITY:
        value = facts[key]
        if key == "portal" and value is not None:
            value = value["address"]
        if value is None or value == "":
            continue
        out[(PREFIX + name).encode()] = _text(value)
    return out


def multipath_xattrs(device: MultipathBlockDevice) -> dict[bytes, bytes]:
    """The attributes of a ``by-id`` file: the identity as the path that answered last sees
    it (else the active path, else the first), and how many paths there are."""
    states = device.path_states()
    path = device.last_path() or device.active_path() or (states[0] if states else None)
    if path is None:
        return {}
    out = lun_xattrs(device, path.target, path.portal, path.lun)
    out[PATHS] = str(len(states)).encode()
    out[PATHS_ACTIVE] = str(sum(s.dm_state == "active" for s in states)).encode()
    return out


def parse_discard(value: bytes) -> tuple[int, int]:
    """``b"OFFSET LENGTH"`` (decimal, bytes) -> ``(offset, length)``; ValueError otherwise."""
    match = _DISCARD_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"{PREFIX}discard wants 'OFFSET LENGTH' in decimal bytes, "
                         f"not {value[:60]!r}")
    return int(match[1]), int(match[2])


def _key(text: str) -> int:
    value = int(text.removeprefix("0x").removeprefix("0X"), 16)
    if not 0 <= value <= MAX_KEY:
        raise ValueError("a reservation key has at most 8 bytes")
    return value


def parse_pr_out(value: bytes) -> PrOut:
    """``b"reserve key=0x123abc type=1"`` -> ``PrOut``; ValueError (without the value, which
    holds keys) otherwise. Keys are hex (``0x`` optional), the type decimal 0-15."""
    try:
        words = value.decode("ascii").split()
    except UnicodeDecodeError:
        raise ValueError(f"{PREFIX}pr wants ASCII text") from None
    if not words or words[0] not in PR_OUT_ACTIONS:
        raise ValueError(f"{PREFIX}pr wants one of {', '.join(PR_OUT_ACTIONS)} first")
    fields: dict = {"action": PR_OUT_ACTIONS[words[0]]}
    for word in words[1:]:
        name, has_value, text = word.partition("=")
        try:
            if name in ("key", "sa_key") and has_value:
                fields[name] = _key(text)
            elif name == "type" and has_value and text.isdigit() and int(text) <= 15:
                fields["type"] = int(text)
            elif name in ("aptpl", "all_tg_pt") and not has_value:
                fields[name] = True
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{PREFIX}pr: bad field {name!r} (key=HEX sa_key=HEX type=0-15 "
                             f"aptpl all_tg_pt)") from None
    return PrOut(**fields)
