"""``iscsifs pr [OPTIONS] PATH``: SCSI persistent reservations through the mount, with
``sg_persist``'s options and output (PATH is a ``raw`` or ``by-id`` file of an iscsifs mount).

The commands go through the mount's own session (for a ``by-id`` file, its paths), so the
registrations and the reservation belong to the mount's I_T nexus, the one its reads and
writes use: the way ``iscsifs discard`` reaches the mount. PERSISTENT RESERVE IN is a
``getxattr`` of ``user.iscsi.pr.<service action>``, answered with JSON (schema
``iscsifs.pr/1``, docs/json.md) that this module prints in sg_persist's layout; PERSISTENT
RESERVE OUT is a ``setxattr`` of ``user.iscsi.pr`` to ``"ACTION key=HEX sa_key=HEX type=N"``.
The errno the mount answers is one line and an exit code: 27 the LUN does not support the
service action (tgt has no READ FULL STATUS), 13 RESERVATION CONFLICT (sg_persist exits 24),
7 bad options or PATH is no raw or by-id file.

Must not know: SCSI, sessions, FUSE internals; it only uses the file's attributes. Keys are
printed only where sg_persist prints them (READ KEYS, READ RESERVATION).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Any

from iscsifs.errors import EXIT_INVALID_ARGUMENT, QuietError
from iscsifs.exits import file_error

PREFIX = "user.iscsi.pr"
PROBE_XATTR = "user.iscsi.block_size"     # every raw and by-id file has it
MAX_KEY = (1 << 64) - 1

# service action -> (xattr suffix / value word, sg_persist's name for it)
PR_IN = {
    "read_keys": "Read keys",
    "read_reservation": "Read reservation",
    "report_capabilities": "Report capabilities",
    "read_full_status": "Read full status",
}
PR_OUT = {
    "register": "Register",
    "reserve": "Reserve",
    "release": "Release",
    "clear": "Clear",
    "preempt": "Preempt",
    "preempt_abort": "Preempt and abort",
    "register_ignore": "Register and ignore existing key",
}
# the TYPE field as sg_persist names it (SPC-4 §6.13.3.4)
TYPE_NAMES = (
    "obsolete [0]", "Write Exclusive", "obsolete [2]", "Exclusive Access", "obsolete [4]",
    "Write Exclusive, registrants only", "Exclusive Access, registrants only",
    "Write Exclusive, all registrants", "Exclusive Access, all registrants",
    "obsolete [9]", "obsolete [0xa]", "obsolete [0xb]", "obsolete [0xc]", "obsolete [0xd]",
    "obsolete [0xe]", "obsolete [0xf]",
)
# sg_persist's order of the type mask lines (SPC-4 §6.13.4 table 174)
CAPABILITY_TYPES = (7, 6, 5, 3, 1, 8)


def _usage(message: str) -> QuietError:
    return QuietError(message, EXIT_INVALID_ARGUMENT)


def _key(text: str, option: str) -> int:
    """A key in hex, ``0x`` optional (sg_persist's RK and SARK)."""
    try:
        value = int(text.removeprefix("0x").removeprefix("0X"), 16)
    except ValueError:
        raise _usage(f"bad argument to '--{option}': {text!r} is not a hex number") from None
    if not 0 <= value <= MAX_KEY:
        raise _usage(f"bad argument to '--{option}': a key has at most 8 bytes")
    return value


def _type(text: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value <= 15:
        raise _usage(f"bad argument to '--prout-type': {text!r} (0 to 15, see "
                     f"'iscsifs pr --help')")
    return value


def _meaning() -> dict[int, str]:
    return {
        errno.EOPNOTSUPP: "not supported by the LUN (bad field in cdb or parameter list: "
                          "perhaps an unsupported service action or type)",
        errno.EBADE: "Reservation conflict",
        errno.EROFS: "the mount is read-only",
        errno.EINVAL: "bad request",
        errno.EIO: "I/O error (the mount's log says why)",
    }


def _check_file(path: str) -> None:
    try:
        os.getxattr(path, PROBE_XATTR)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise _usage(f"pr {path}: not a raw or by-id file of an iscsifs mount") from None
        raise file_error(exc, path, doing="pr") from None


def _inquiry(path: str) -> list[str]:
    """sg_persist's two INQUIRY lines, from the file's identity attributes."""
    def attr(name: str, width: int) -> str:
        try:
            value = os.getxattr(path, f"user.iscsi.{name}").decode("ascii", "replace")
        except OSError:
            value = ""
        return value.ljust(width)[:width]
    return [f"  {attr('vendor', 8)}  {attr('product', 16)}  {attr('revision', 4)}",
            "  Peripheral device type: disk"]


def format_pr_in(facts: dict[str, Any]) -> list[str]:
    """sg_persist's lines for one PERSISTENT RESERVE IN answer (``iscsifs.pr/1`` facts)."""
    action = facts["service_action"]
    generation = f"  PR generation=0x{int(facts['generation'] or 0):x}"
    if action == "read_keys":
        keys = facts["keys"]
        if not keys:
            return [f"{generation}, there are NO registered reservation keys"]
        head = ("1 registered reservation key follows:" if len(keys) == 1 else
                f"{len(keys)} registered reservation keys follow:")
        return [f"{generation}, {head}"] + [f"    {k}" for k in keys]
    if action == "read_reservation":
        res = facts["reservation"]
        if res is None:
            return [f"{generation}, there is NO reservation held"]
        scope = "    scope: LU_SCOPE, " if res["scope"] == 0 else f"    scope: {res['scope']} "
        return [f"{generation}, Reservation follows:", f"    Key={res['key']}",
                f"{scope} type: {TYPE_NAMES[res['type'] & 0xF]}"]
    if action == "report_capabilities":
        caps = facts["capabilities"]
        lines = [
            "Report capabilities response:",
            f"  Replace Lost Reservation Capable(RLR_C): {int(caps['rlr_c'])}",
            f"  Compatible Reservation Handling(CRH): {int(caps['crh'])}",
            f"  Specify Initiator Ports Capable(SIP_C): {int(caps['sip_c'])}",
            f"  All Target Ports Capable(ATP_C): {int(caps['atp_c'])}",
            f"  Persist Through Power Loss Capable(PTPL_C): {int(caps['ptpl_c'])}",
            f"  Type Mask Valid(TMV): {int(caps['tmv'])}",
            f"  Allow Commands: {int(caps['allow_commands'])}",
            f"  Persist Through Power Loss Active(PTPL_A): {int(caps['ptpl_a'])}",
        ]
        if caps["tmv"]:
            lines.append("    Support indicated in Type mask:")
            lines += [f"      {TYPE_NAMES[t]}: {int(t in caps['types'])}"
                      for t in CAPABILITY_TYPES]
        return lines
    # read_full_status
    lines = [generation]
    regs = facts["registrations"]
    if not regs:
        lines.append("  No full status descriptors")
    for reg in regs:
        lines.append(f"    Key={reg['key']}")
        if reg["all_tg_pt"]:
            lines.append("      All target ports bit set")
        else:
            lines += ["      All target ports bit clear",
                      f"      Relative port address: 0x{reg['relative_target_port']:x}"]
        if reg["holder"]:
            scope = "      scope: LU_SCOPE, " if reg["scope"] == 0 else \
                f"      scope: {reg['scope']} "
            lines += ["      << Reservation holder >>",
                      f"{scope} type: {TYPE_NAMES[reg['type'] & 0xF]}"]
        else:
            lines.append("      not reservation holder")
        tid = _iscsi_name(bytes.fromhex(reg["transport_id"]))
        if tid is not None:
            lines += ["      Transport Id of initiator:", f"        iSCSI name: {tid}"]
    return lines


def _iscsi_name(tid: bytes) -> str | None:
    if len(tid) < 4 or tid[0] & 0x0F != 0x5:
        return None
    name = tid[4:4 + int.from_bytes(tid[2:4], "big")].split(b"\0", 1)[0]
    return name.decode("ascii", "backslashreplace")


def pr(args: Any) -> int:
    path = args.device or args.path
    if path is None:
        raise _usage("pr: no PATH given (a raw or by-id file of an iscsifs mount)")
    if args.device and args.path and args.device != args.path:
        raise _usage(f"pr: unexpected extra argument: {args.path}")
    rk, sark = _key(args.param_rk, "param-rk"), _key(args.param_sark, "param-sark")
    prout_type = _type(args.prout_type)
    ins = [a for a in PR_IN if getattr(args, a)]
    outs = [a for a in PR_OUT if getattr(args, a)]
    if args.want_in and args.want_out:
        raise _usage("pr: choose '--in' _or_ '--out' (not both)")
    if args.want_out:
        if len(outs) != 1 or ins:
            raise _usage("pr: for Persistent Reserve Out one and only one appropriate service "
                         "action must be chosen (e.g. '--register')")
    else:
        if outs:
            raise _usage("pr: when a service action for Persistent Reserve Out is chosen the "
                         "'--out' option must be given (as a safeguard)")
        if len(ins) > 1:
            raise _usage("pr: too many service actions given; choose one only")
        if not ins:
            print(">> No service action given; assume Persistent Reserve In command\n"
                  ">> with Read Keys service action", file=sys.stderr)
            ins = ["read_keys"]
    _check_file(path)
    if not args.no_inquiry:
        print("\n".join(_inquiry(path)))
    if not args.want_out:
        action = ins[0]
        doing = f"PR in ({PR_IN[action]}) on"
        try:
            value = os.getxattr(path, f"{PREFIX}.{action}")
        except OSError as exc:
            raise file_error(exc, path, doing=doing, meaning=_meaning()) from None
        print("\n".join(format_pr_in(json.loads(value))))
        return 0
    action = outs[0]
    if action in ("reserve", "release", "preempt", "preempt_abort") and prout_type == 0:
        print("warning>>> --prout-type probably needs to be given", file=sys.stderr)
    words = [action, f"key=0x{rk:x}", f"sa_key=0x{sark:x}", f"type={prout_type}"]
    if args.param_aptpl:
        words.append("aptpl")
    if args.param_alltgpt:
        words.append("all_tg_pt")
    doing = f"PR out ({PR_OUT[action]}) on"
    try:
        os.setxattr(path, PREFIX, " ".join(words).encode("ascii"))
    except OSError as exc:
        raise file_error(exc, path, doing=doing, meaning=_meaning()) from None
    if args.pr_verbose:
        print(f"PR out: command ({PR_OUT[action]}) successful", file=sys.stderr)
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``pr`` to the ``iscsifs`` command line (sg_persist's options)."""
    p = subparsers.add_parser(
        "pr", help="SCSI persistent reservations through the mount (sg_persist)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="PERSISTENT RESERVE IN or OUT on the LUN of a raw or by-id file of an "
        "iscsifs mount, through the mount's own session(s), with sg_persist's options and "
        "output.",
        epilog="PR Out TYPE field value meanings:\n"
        "  1:    write exclusive\n  3:    exclusive access\n"
        "  5:    write exclusive, registrants only\n  6:    exclusive access, registrants only\n"
        "  7:    write exclusive, all registrants\n  8:    exclusive access, all registrants")
    p.add_argument("path", metavar="PATH", nargs="?",
                   help="a raw or by-id file of an iscsifs mount")
    p.add_argument("-d", "--device", metavar="PATH", help="PATH as an option")
    p.add_argument("-i", "--in", dest="want_in", action="store_true",
                   help="PERSISTENT RESERVE IN (default)")
    p.add_argument("-o", "--out", dest="want_out", action="store_true",
                   help="PERSISTENT RESERVE OUT")
    p.add_argument("-k", "--read-keys", action="store_true", help="PR In: Read Keys (default)")
    p.add_argument("-r", "--read-reservation", action="store_true",
                   help="PR In: Read Reservation")
    p.add_argument("-c", "--report-capabilities", action="store_true",
                   help="PR In: Report Capabilities")
    p.add_argument("-s", "--read-full-status", "--read-status", action="store_true",
                   help="PR In: Read Full Status")
    p.add_argument("-G", "--register", action="store_true", help="PR Out: Register")
    p.add_argument("-I", "--register-ignore", action="store_true",
                   help="PR Out: Register and Ignore")
    p.add_argument("-R", "--reserve", action="store_true", help="PR Out: Reserve")
    p.add_argument("-L", "--release", action="store_true", help="PR Out: Release")
    p.add_argument("-C", "--clear", action="store_true", help="PR Out: Clear")
    p.add_argument("-P", "--preempt", action="store_true", help="PR Out: Preempt")
    p.add_argument("-A", "--preempt-abort", action="store_true",
                   help="PR Out: Preempt and Abort")
    p.add_argument("-K", "--param-rk", metavar="RK", default="0",
                   help="PR Out parameter reservation key (hex)")
    p.add_argument("-S", "--param-sark", metavar="SARK", default="0",
                   help="PR Out parameter service action reservation key (hex)")
    p.add_argument("-T", "--prout-type", metavar="TYPE", default="0",
                   help="PR Out type field (see below)")
    p.add_argument("-Z", "--param-aptpl", action="store_true",
                   help="PR Out parameter 'APTPL'")
    p.add_argument("-Y", "--param-alltgpt", action="store_true",
                   help="PR Out parameter 'ALL_TG_PT'")
    p.add_argument("-n", "--no-inquiry", action="store_true",
                   help="skip INQUIRY (default: print vendor, product, revision)")
    p.add_argument("-v", "--verbose", dest="pr_verbose", action="store_true",
                   help="say when a PR Out command succeeded")
    p.set_defaults(run=pr, is_async=False)
