"""mount.iscsifs's command line: mount(8)'s helper convention, the ``-o`` vocabulary (fstab
options included), and the checks made before anything is mounted.

    mount.iscsifs PORTAL[,PORTAL...] MOUNTPOINT [-o OPTIONS] [-f] [-d] [-v] [-s] [-n]
    mount -t iscsifs 127.0.0.1:3260 /mnt/san        (mount(8) runs /sbin/mount.iscsifs)
    mount -t iscsifs -o isns=10.0.0.1 isns /mnt/san (portals and targets from iSNS)

Owns: ``MountOptions`` (everything one mount was asked for), ``parse_args`` / ``apply_option``
(QuietError, exit 7, for bad input), the help text, and ``check_mountpoint``.
"""

from __future__ import annotations

import getopt
import ipaddress
import os
import stat
from dataclasses import dataclass, field

from iscsifs import __version__
from iscsifs.config.locations import default_config_dir
from iscsifs.core.isns import ISNS_PORT
from iscsifs.core.names import Portal
from iscsifs.errors import EXIT_INVALID_ARGUMENT, QuietError
from iscsifs.exits import portal_arg
from iscsifs.fs.ops import CACHE_MODES
from iscsifs.logs import SYSLOG
from iscsifs.mounttable import iscsifs_mounts
from iscsifs.multipath import POLICIES as MULTIPATH_POLICIES

PROG = "mount.iscsifs"
USAGE = (f"usage: {PROG} PORTAL[,PORTAL...] MOUNTPOINT [-o OPTION[,OPTION...]] "
         f"[-f] [-d] [-v] [-s] [-n]")

# fstab / mount(8) bookkeeping options: accepted, and ignored by the helper
IGNORED_OPTIONS = frozenset({
    "_netdev", "noauto", "auto", "nofail", "user", "nouser", "users", "owner", "group",
    "defaults", "loud", "silent",
})
IGNORED_PREFIXES = ("x-", "comment=")
# generic VFS options libfuse 3.14 passes to the kernel (tested: it accepts exactly these)
FUSE_PASSTHROUGH = frozenset({
    "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync",
    "atime", "noatime",
})
# generic VFS options libfuse rejects; relatime is the kernel's default anyway
FUSE_DROPPED = frozenset({"relatime", "norelatime", "strictatime", "nostrictatime",
                          "lazytime", "nolazytime", "diratime", "nodiratime", "iversion",
                          "noiversion", "mand", "nomand"})

TIMEOUT_OPTIONS = {            # mount option -> net.session.Timeouts field
    "login_timeout": "login",
    "logout_timeout": "logout",
    "noop_out_interval": "noop_out_interval",
    "noop_out_timeout": "noop_out_timeout",
    "replacement_timeout": "replacement_timeout",
    "command_timeout": "command",
    "abort_timeout": "abort",
    "lu_reset_timeout": "lu_reset",
    "tgt_reset_timeout": "tgt_reset",
}
# the PORTAL argument of a mount whose portals all come from iSNS (-o isns=HOST)
ISNS_SPEC = "isns"
# login=: which targets the mount logs in to before it reports ready (docs/mount-options.md)
LOGIN_MODES = ("automatic", "all", "lazy")
DIGESTS = {                    # mount option value (',' is the -o separator, so '+') -> key value
    "none": "None", "crc32c": "CRC32C", "crc32c+none": "CRC32C,None",
    "none+crc32c": "None,CRC32C",
}

# the options a user may give with -o, for the docs and --help
OPTION_HELP = """\
options (-o, comma separated; later ones win):
  ro | rw                  read-only mount (no WRITE is ever sent) / read-write (default)
  initiator_name=IQN       our iSCSI name (default: CONFIG_DIR/initiatorname.iscsi,
                           generated and saved there on the first mount)
  config_dir=DIR           iscsid.conf, initiatorname.iscsi and node records (default
                           $ISCSIFS_CONFIG_DIR, /etc/iscsifs as root, ~/.config/iscsifs)
  open_iscsi               also read /etc/iscsi/iscsid.conf and initiatorname.iscsi
  nodiscovery              never send SendTargets: list the node records of each portal
  cache=auto|direct|page   raw files: auto = like a block device, the page cache for
                           buffered opens and none for O_DIRECT (default); direct = never
                           the page cache; page = always
  multipath=failover|round-robin   by-id files: one active path, the others standby
                           (default), or every healthy path in turn
  allow_other              let other users access the mount (modes still apply)
  debug                    stay in the foreground, log at DEBUG (one line per PDU)
  foreground               stay in the foreground (same as -f)
  logfile=PATH|syslog      where the daemon logs (default: LOG_DIR/<mount point, escaped
                           like systemd-escape --path>.log, LOG_DIR = $ISCSIFS_LOG_DIR,
                           /var/log/iscsifs as root, ~/.local/state/iscsifs otherwise;
                           warnings also go to syslog when /dev/log exists)
  login=automatic|all|lazy at mount time, log in to the node records with node.startup =
                           automatic (default) / to every target SendTargets reports /
                           to nothing; the rest logs in on first use
  login_timeout=S logout_timeout=S noop_out_interval=S noop_out_timeout=S
  replacement_timeout=S command_timeout=S      seconds, as in iscsid.conf
                           0: noop_out_interval sends no NOP-Out, noop_out_timeout waits for
                           its answer without limit (no ping ever fails a connection),
                           command_timeout has no limit; replacement_timeout<0: for ever
  abort_timeout=S lu_reset_timeout=S tgt_reset_timeout=S   error recovery steps (seconds)
  header_digest=V data_digest=V                V: none | crc32c | crc32c+none | none+crc32c
  isns=HOST[:PORT]         find targets and portals through this iSNS server (port 3205
                           by default) instead of SendTargets; PORTAL may then be "isns"
  source_address=ADDR      bind every connection (discovery, login, relogin) to this
                           local IP address (open-iscsi's iface.ipaddress)
  max_sectors_kb=N         split larger reads and writes into concurrent commands of N KiB
                           at most (4..1024, default 512; the LUN's own limit also applies)
  read_ahead_kb=N          the kernel's read-ahead for buffered reads of raw files, in KiB
                           (default 1024; 0 keeps the kernel's 128; needs root)
  reservation_key=0xKEY[:aptpl]   register this persistent reservation key (up to 8 bytes,
                           hex) on every LUN at every login, before any I/O (multipath.conf)
  alua_transition_timeout=S   by-id files: how long commands wait for a path in an ALUA
                           transition (default 60)
  nosuid suid nodev dev noexec exec sync async dirsync atime noatime   passed to the kernel
  _netdev noauto auto nofail user users nouser owner group defaults loud silent x-*
  comment=*                fstab bookkeeping: ignored
  relatime norelatime strictatime nostrictatime lazytime nolazytime diratime nodiratime
  iversion noiversion mand nomand      ignored (libfuse refuses them; relatime is the default)
flags: -f foreground, -d debug, -v verbose, -s sloppy (unknown options only warn), -n ignored
In the foreground the log goes to stderr unless logfile= is given. See mount.iscsifs(8).
"""


@dataclass
class MountOptions:
    portals: list[Portal]
    mountpoint: str
    spec: str = ""
    read_only: bool = False
    initiator_name: str | None = None
    config_dir: str = field(default_factory=default_config_dir)
    config_dir_given: bool = False
    open_iscsi: bool = False
    nodiscovery: bool = False
    cache: str = "auto"
    multipath: str = "failover"
    allow_other: bool = False
    debug: bool = False
    foreground: bool = False
    verbose: bool = False
    sloppy: bool = False
    logfile: str | None = None                                      # None: default_log_file
    login: str = "automatic"                                        # one of LOGIN_MODES
    timeouts: dict[str, int] = field(default_factory=dict)          # Timeouts field -> value
    max_sectors_kb: int = 512                                       # requests split above
    read_ahead_kb: int = 1024                                       # the mount's bdi
    reservation_key: int | None = field(default=None, repr=False)   # registered everywhere
    reservation_aptpl: bool = False
    alua_transition_timeout: int = 60
    header_digest: str | None = None
    data_digest: str | None = None
    source_address: str | None = None                               # local IP to bind to
    isns: Portal | None = None                                      # iSNS server to ask
    fuse_options: list[str] = field(default_factory=list)           # passed through to libfuse
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _usage_error(message: str) -> QuietError:
    return QuietError(message, EXIT_INVALID_ARGUMENT)


# -- option parsing --------------------------------------------------------------------------
def _int_value(key: str, value: str, *, allow_negative: bool = False,
               unit: str = "seconds") -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise _usage_error(f"bad value for {key}: {value!r} (expected a number of {unit})"
                           ) from None
    if number < 0 and not allow_negative:
        raise _usage_error(f"bad value for {key}: {value!r} (must not be negative)")
    return number


def apply_option(opts: MountOptions, item: str) -> None:
    """Apply one -o item to opts (QuietError for unknown/bad ones unless sloppy)."""
    item = item.strip()
    if not item:
        return
    key, has_value, value = item.partition("=")
    if item in IGNORED_OPTIONS or item.startswith(IGNORED_PREFIXES):
        opts.ignored.append(item)
    elif item in ("ro", "rw"):
        opts.read_only = item == "ro"
    elif item == "allow_other":
        opts.allow_other = True
    elif item == "debug":
        opts.debug = True
        opts.foreground = True
    elif item == "foreground":
        opts.foreground = True
    elif item == "open_iscsi":
        opts.open_iscsi = True
    elif item == "nodiscovery":
        opts.nodiscovery = True
    elif item in FUSE_PASSTHROUGH:
        opts.fuse_options.append(item)
    elif item in FUSE_DROPPED:
        opts.ignored.append(item)
    elif not has_value:
        _unknown(opts, item)
    elif key == "initiator_name":
        if not value:
            raise _usage_error("initiator_name= needs a value")
        opts.initiator_name = value
    elif key == "config_dir":
        if not value:
            raise _usage_error("config_dir= needs a value")
        opts.config_dir = os.path.abspath(value)
        opts.config_dir_given = True
    elif key == "logfile":
        if not value:
            raise _usage_error("logfile= needs a value")
        opts.logfile = value if value == SYSLOG else os.path.abspath(value)
    elif key == "login":
        if value not in LOGIN_MODES:
            raise _usage_error(f"bad value for login: {value!r} "
                               f"(expected {', '.join(LOGIN_MODES)})")
        opts.login = value
    elif key == "cache":
        if value not in CACHE_MODES:
            raise _usage_error(f"bad value for cache: {value!r} "
                               f"(expected {', '.join(CACHE_MODES)})")
        opts.cache = value
    elif key == "multipath":
        if value not in MULTIPATH_POLICIES:
            raise _usage_error(f"bad value for multipath: {value!r} "
                               f"(expected failover or round-robin)")
        opts.multipath = value
    elif key in TIMEOUT_OPTIONS:
        opts.timeouts[TIMEOUT_OPTIONS[key]] = _int_value(
            key, value, allow_negative=(key == "replacement_timeout"))
    elif key == "max_sectors_kb":
        kib = _int_value(key, value, unit="KiB")
        if not 4 <= kib <= 1024:
            raise _usage_error(f"bad value for max_sectors_kb: {value!r} (4 to 1024)")
        opts.max_sectors_kb = kib
    elif key == "read_ahead_kb":
        kib = _int_value(key, value, unit="KiB")
        if not 0 <= kib <= 65536:
            raise _usage_error(f"bad value for read_ahead_kb: {value!r} (0 to 65536)")
        opts.read_ahead_kb = kib
    elif key == "isns":
        if not value:
            raise _usage_error("isns= needs the iSNS server: isns=HOST[:PORT]")
        opts.isns = portal_arg(value, default_port=ISNS_PORT)
    elif key == "source_address":
        try:
            opts.source_address = str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            raise _usage_error(f"bad value for source_address: {value!r} (expected an IP "
                               f"address of this host)") from None
    elif key == "reservation_key":
        opts.reservation_key, opts.reservation_aptpl = parse_reservation_key(value)
    elif key == "alua_transition_timeout":
        opts.alua_transition_timeout = _int_value(key, value)
    elif key in ("header_digest", "data_digest"):
        digest = DIGESTS.get(value.lower())
        if digest is None:
            raise _usage_error(f"bad value for {key}: {value!r} "
                               f"(expected none, crc32c, crc32c+none or none+crc32c)")
        setattr(opts, key, digest)
    else:
        _unknown(opts, item)


def parse_reservation_key(value: str) -> tuple[int, bool]:
    """multipath.conf's reservation_key: ``0x`` and up to 16 hex digits (8 bytes), optionally
    ``:aptpl`` (register with APTPL). The key itself never appears in the error."""
    text, _, suffix = value.partition(":")
    digits = text[2:] if text[:2].lower() == "0x" else text
    if suffix not in ("", "aptpl") or not 1 <= len(digits) <= 16 or \
            any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise _usage_error("bad value for reservation_key (expected 0x and at most 16 hex "
                           "digits, optionally :aptpl)")
    key = int(digits, 16)
    if key == 0:
        raise _usage_error("bad value for reservation_key: 0 is no key (it unregisters)")
    return key, suffix == "aptpl"


def _unknown(opts: MountOptions, item: str) -> None:
    shown = item.partition("=")[0]
    if opts.sloppy:
        opts.warnings.append(f"ignoring unknown option {shown!r}")
        opts.ignored.append(item)
        return
    raise _usage_error(f"unknown option {shown!r} (see {PROG} --help)")


def parse_args(argv: list[str]) -> MountOptions:
    """argv (without the program name) -> MountOptions; QuietError on bad input."""
    try:
        flags, positional = getopt.gnu_getopt(argv, "o:fdvsnhVt:N:",
                                              ["help", "version", "options="])
    except getopt.GetoptError as exc:
        raise _usage_error(f"{exc} ({USAGE})") from None
    option_items: list[str] = []
    foreground = debug = verbose = sloppy = False
    for flag, value in flags:
        if flag in ("-h", "--help"):
            raise QuietError(USAGE + "\n" + OPTION_HELP.rstrip("\n"), 0)
        if flag in ("-V", "--version"):
            raise QuietError(f"{PROG} (iscsifs) {__version__}", 0)
        if flag in ("-o", "--options"):
            option_items.extend(value.split(","))
        elif flag == "-f":
            foreground = True
        elif flag == "-d":
            debug = True
        elif flag == "-v":
            verbose = True
        elif flag == "-s":
            sloppy = True
        elif flag == "-n":
            pass            # no /etc/mtab to skip writing: we never write it
        elif flag == "-t":
            if value.split(".")[0] not in ("iscsifs", "fuse"):
                raise _usage_error(f"-t {value}: this helper mounts iscsifs only")
        elif flag == "-N":
            raise _usage_error("-N (mount namespaces) is not supported")
    if len(positional) != 2:
        raise _usage_error(f"expected PORTAL[,PORTAL...] and MOUNTPOINT ({USAGE})")
    spec, mountpoint = positional
    portals = []
    for text in [] if spec == ISNS_SPEC else spec.split(","):
        if not text.strip():
            raise _usage_error(f"bad portal list {spec!r}: empty entry")
        portal = portal_arg(text)
        if portal not in portals:
            portals.append(portal)
    opts = MountOptions(portals=portals, mountpoint=os.path.abspath(mountpoint), spec=spec,
                        sloppy=sloppy, verbose=verbose)
    for item in option_items:
        apply_option(opts, item)
    if spec == ISNS_SPEC and opts.isns is None:
        raise _usage_error(f"PORTAL {ISNS_SPEC!r} needs -o isns=HOST[:PORT] (the iSNS server)")
    opts.foreground = opts.foreground or foreground or debug
    opts.debug = opts.debug or debug
    return opts


def iscsifs_mounted_at(path: str) -> bool:
    """Is an iscsifs already mounted on path (per /proc/self/mountinfo)?"""
    return path in iscsifs_mounts()


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise QuietError(f"mount point {path} does not exist", EXIT_INVALID_ARGUMENT) from None
    except OSError as exc:
        raise QuietError(f"mount point {path}: {exc.strerror}", EXIT_INVALID_ARGUMENT) from None
    if not stat.S_ISDIR(st.st_mode):
        raise QuietError(f"mount point {path} is not a directory", EXIT_INVALID_ARGUMENT)
    if iscsifs_mounted_at(path):
        raise QuietError(f"{path} is already an iscsifs mount point", EXIT_INVALID_ARGUMENT)

