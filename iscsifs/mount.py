"""``mount.iscsifs``: mount the targets behind one or more iSCSI portals as a FUSE filesystem.

Owns: the command line in the mount(8) helper convention, option parsing, the pre-mount portal
check, daemonizing, logging setup, and the lifetime of a mount (one trio nursery; the Initiator
created with it; ``pyfuse3.init`` -> ``pyfuse3.main`` -> log out every session ->
``pyfuse3.close(unmount=True)``).

    mount.iscsifs PORTAL[,PORTAL...] MOUNTPOINT [-o OPTIONS] [-f] [-d] [-v] [-s] [-n]
    mount -t iscsifs 127.0.0.1:3260 /mnt/san        (mount(8) runs /sbin/mount.iscsifs)

User errors are one line on stderr (``mount.iscsifs: ...``) and an iscsiadm-style exit code
(``iscsifs.errors``); nothing is left mounted.

Configuration: ``config_dir=`` (default ``iscsifs.cli.default_config_dir()``: our own state,
never open-iscsi's /etc/iscsi) holds ``initiatorname.iscsi`` (generated and saved on the first
mount), ``iscsid.conf`` (global defaults: CHAP, timeouts, login parameters) and the node and
discovery records (open-iscsi's layout). ``open_iscsi`` also reads /etc/iscsi/iscsid.conf and
/etc/iscsi/initiatorname.iscsi under ours. Precedence for one login: mount options > the
target's node record > iscsid.conf > built-in defaults.

Must not know: PDUs, SCSI, sessions — it talks to ``net.initiator.Initiator`` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getopt
import logging
import logging.handlers
import os
import signal
import stat
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from iscsifs import __version__
from iscsifs.errors import (
    EXIT_GENERIC, EXIT_INVALID_ARGUMENT, EXIT_LOGIN_FAILED, EXIT_TRANSPORT_FAILURE, ConfigError,
    QuietError,
)

log = logging.getLogger(__name__)

PROG = "mount.iscsifs"
OPEN_ISCSI_DIR = "/etc/iscsi"                 # read (never written) with -o open_iscsi
INAME_PREFIX = "iqn.2016-04.com.open-iscsi"   # iscsi-iname's default prefix


def default_config_dir() -> str:
    from iscsifs.cli import default_config_dir as default
    return default()

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

FUSE_IDLE_WORKERS = 32        # idle pyfuse3 worker tasks kept waiting for requests
FUSE_MAX_WORKERS = 256        # requests handled at once (the session queues beyond its window)

TIMEOUT_OPTIONS = {            # mount option -> net.initiator.Timeouts field
    "login_timeout": "login",
    "logout_timeout": "logout",
    "noop_out_interval": "noop_out_interval",
    "noop_out_timeout": "noop_out_timeout",
    "replacement_timeout": "replacement_timeout",
    "command_timeout": "command",
}
DIGESTS = {                    # mount option value (',' is the -o separator, so '+') -> key value
    "none": "None", "crc32c": "CRC32C", "crc32c+none": "CRC32C,None",
    "none+crc32c": "None,CRC32C",
}
CACHE_MODES = ("direct", "page")

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
  cache=direct|page        raw files: direct = no page cache (default), page = kernel cache
  allow_other              let other users access the mount (modes still apply)
  debug                    stay in the foreground, log at DEBUG (one line per PDU)
  foreground               stay in the foreground (same as -f)
  logfile=PATH             where the daemon logs (default: syslog if /dev/log exists)
  login_timeout=S logout_timeout=S noop_out_interval=S noop_out_timeout=S
  replacement_timeout=S command_timeout=S      seconds, as in iscsid.conf
  header_digest=V data_digest=V                V: none | crc32c | crc32c+none | none+crc32c
  nosuid suid nodev dev noexec exec sync async dirsync atime noatime   passed to the kernel
  _netdev noauto auto nofail user users nouser owner group defaults x-* comment=*  ignored
flags: -f foreground, -d debug, -v verbose, -s sloppy (unknown options only warn), -n ignored
"""


@dataclass
class MountOptions:
    portals: list[Any]
    mountpoint: str
    spec: str = ""
    read_only: bool = False
    initiator_name: str | None = None
    config_dir: str = field(default_factory=default_config_dir)
    config_dir_given: bool = False
    open_iscsi: bool = False
    nodiscovery: bool = False
    cache: str = "direct"
    allow_other: bool = False
    debug: bool = False
    foreground: bool = False
    verbose: bool = False
    sloppy: bool = False
    logfile: str | None = None
    timeouts: dict[str, int] = field(default_factory=dict)          # Timeouts field -> value
    header_digest: str | None = None
    data_digest: str | None = None
    fuse_options: list[str] = field(default_factory=list)           # passed through to libfuse
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _usage_error(message: str) -> QuietError:
    return QuietError(message, EXIT_INVALID_ARGUMENT)


# -- portals -------------------------------------------------------------------------------
def _parse_portal(text: str) -> Any:
    try:
        from iscsifs.core.discovery import parse_portal
    except ImportError:   # pragma: no cover - until core/discovery.py lands
        parse_portal = _fallback_parse_portal
    try:
        return parse_portal(text)
    except ValueError as exc:
        raise _usage_error(f"bad portal {text!r}: {exc}") from None


@dataclass(frozen=True, order=True)
class _FallbackPortal:   # pragma: no cover - replaced by core.discovery.Portal
    host: str
    port: int = 3260
    tpgt: int = 1


def _fallback_parse_portal(text: str) -> Any:  # pragma: no cover - see _parse_portal
    import ipaddress
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("missing ']'")
        ipaddress.IPv6Address(host)
        port_text = rest[1:] if rest.startswith(":") else (rest or None)
        if rest and not rest.startswith(":"):
            raise ValueError("expected ':PORT' after ']'")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError("IPv6 addresses must be written [ADDR]:PORT")
    else:
        host, port_text = text, None
    if not host or any(c.isspace() or c in "/,@" for c in host):
        raise ValueError("expected HOST, HOST:PORT or [IPv6]:PORT")
    port = 3260
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    return _FallbackPortal(host, port)


# -- option parsing --------------------------------------------------------------------------
def _int_value(key: str, value: str, *, allow_negative: bool = False) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise _usage_error(f"bad value for {key}: {value!r} (expected a number of seconds)"
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
        opts.logfile = os.path.abspath(value)
    elif key == "cache":
        if value not in CACHE_MODES:
            raise _usage_error(f"bad value for cache: {value!r} (expected direct or page)")
        opts.cache = value
    elif key in TIMEOUT_OPTIONS:
        opts.timeouts[TIMEOUT_OPTIONS[key]] = _int_value(
            key, value, allow_negative=(key == "replacement_timeout"))
    elif key in ("header_digest", "data_digest"):
        digest = DIGESTS.get(value.lower())
        if digest is None:
            raise _usage_error(f"bad value for {key}: {value!r} "
                               f"(expected none, crc32c, crc32c+none or none+crc32c)")
        setattr(opts, key, digest)
    else:
        _unknown(opts, item)


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
    for text in spec.split(","):
        if not text.strip():
            raise _usage_error(f"bad portal list {spec!r}: empty entry")
        portal = _parse_portal(text)
        if portal not in portals:
            portals.append(portal)
    opts = MountOptions(portals=portals, mountpoint=os.path.abspath(mountpoint), spec=spec,
                        sloppy=sloppy, verbose=verbose)
    for item in option_items:
        apply_option(opts, item)
    opts.foreground = opts.foreground or foreground or debug
    opts.debug = opts.debug or debug
    return opts


def _unescape_mountinfo(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 4 <= len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def iscsifs_mounted_at(path: str) -> bool:
    """Is an iscsifs already mounted on path (per /proc/self/mountinfo)?"""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        fstype = right.split()[0] if right.split() else ""
        if fstype == "fuse.iscsifs" and _unescape_mountinfo(fields[4]) == path:
            return True
    return False


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
        raise QuietError(f"{path} is already an iscsifs mount point", EXIT_GENERIC)


# -- initiator name --------------------------------------------------------------------------
def _valid_name(name: str) -> bool:
    try:
        from iscsifs.core.discovery import valid_iscsi_name
    except ImportError:   # pragma: no cover
        from iscsifs.fs.tree import safe_name
        return safe_name(name) and name.startswith(("iqn.", "eui.", "naa."))
    return valid_iscsi_name(name)


def resolve_initiator_name(opts: MountOptions) -> str:
    """initiator_name= > CONFIG_DIR/initiatorname.iscsi > (open_iscsi) /etc/iscsi's > a new
    name, generated and saved in CONFIG_DIR/initiatorname.iscsi (reused by later mounts)."""
    if opts.initiator_name is not None:
        name = opts.initiator_name
        if not _valid_name(name):
            raise _usage_error(f"bad initiator_name {name!r} (expected iqn./eui./naa. name)")
        return name
    if opts.config_dir_given and not os.path.isdir(opts.config_dir):
        raise _usage_error(f"config_dir {opts.config_dir} is not a directory")
    from iscsifs.config import ensure_initiator_name
    path = os.path.join(opts.config_dir, "initiatorname.iscsi")
    existed = os.path.exists(path)
    try:
        name, _alias = ensure_initiator_name(
            opts.config_dir, open_iscsi_dir=OPEN_ISCSI_DIR if opts.open_iscsi else None,
            prefix=INAME_PREFIX)
    except ConfigError as exc:
        raise QuietError(str(exc), EXIT_INVALID_ARGUMENT) from None
    except OSError as exc:
        raise QuietError(f"{path}: cannot save a new initiator name: "
                         f"{exc.strerror or exc}", EXIT_INVALID_ARGUMENT) from None
    if not existed and os.path.exists(path):
        opts.warnings.append(f"no initiator name configured: generated {name} and saved it "
                             f"in {path}")
    return name


def fuse_options(opts: MountOptions) -> set[str]:
    options = {"fsname=iscsifs", "subtype=iscsifs", "default_permissions"}
    if opts.allow_other:
        options.add("allow_other")
    options.add("ro" if opts.read_only else "rw")
    options.update(opts.fuse_options)
    return options


# -- logging ---------------------------------------------------------------------------------
def setup_logging(opts: MountOptions, *, to_stderr: bool) -> None:
    level = logging.DEBUG if opts.debug else (logging.INFO if opts.verbose else logging.WARNING)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = "%(asctime)s.%(msecs)03d %(name)s %(levelname)s: %(message)s"
    handler: logging.Handler
    if opts.logfile:
        handler = logging.FileHandler(opts.logfile)
        handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    elif to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(f"iscsifs[{os.getpid()}]: %(name)s "
                                               "%(levelname)s: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(level)
    # pyfuse3 logs every request at DEBUG; keep it to INFO unless asked very loudly
    logging.getLogger("pyfuse3").setLevel(max(level, logging.INFO))


# -- the mount's lifetime --------------------------------------------------------------------
class _Reporter:
    """The daemon's side of the startup pipe: one line, then closed."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def _send(self, text: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def ready(self) -> None:
        self._send("OK\n")

    def error(self, code: int, message: str) -> None:
        self._send(f"ERR {code} {' '.join(message.split())}\n")


async def check_portal_tcp(portal: Any, timeout: float) -> None:
    """The portal answers a TCP connect within timeout, or QuietError."""
    import trio
    from iscsifs.fs.tree import portal_dir_name
    name = portal_dir_name(portal)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(portal.host, portal.port)
    except trio.TooSlowError:
        raise QuietError(f"cannot connect to portal {name}: no answer in {timeout:g} s",
                         EXIT_TRANSPORT_FAILURE) from None
    except OSError as exc:
        raise QuietError(f"cannot connect to portal {name}: {_first_os_reason(exc)}",
                         EXIT_TRANSPORT_FAILURE) from None
    await stream.aclose()


def _first_os_reason(exc: BaseException) -> str:
    """The first OS-level reason (strerror) in exc, its groups and its cause chain."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno:
            return os.strerror(cur.errno)
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        if isinstance(cur, BaseExceptionGroup):
            todo.extend(cur.exceptions)
        for nxt in (cur.__cause__, cur.__context__):
            if nxt is not None:
                todo.append(nxt)
    return str(exc) or type(exc).__name__


def _quiet_error_in(exc: BaseException) -> QuietError | None:
    """The QuietError inside an exception group (trio nurseries wrap what their body raises)."""
    if isinstance(exc, QuietError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = _quiet_error_in(sub)
            if found is not None:
                return found
    return None


def _discovery_error(portal: Any, exc: BaseException) -> QuietError:
    from iscsifs.fs.tree import portal_dir_name
    name = portal_dir_name(portal)
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    names = {cls.__name__ for cls in type(exc).__mro__}
    code = getattr(exc, "exit_code", None)
    if "LoginError" in names:
        return QuietError(f"discovery on portal {name} failed: {exc}",
                          code if isinstance(code, int) else EXIT_LOGIN_FAILED)
    if "TooSlowError" in names:
        return QuietError(f"discovery on portal {name}: no answer in time",
                          EXIT_TRANSPORT_FAILURE)
    if isinstance(exc, OSError) or "ConnectionLost" in names:
        return QuietError(f"discovery on portal {name} failed: {_first_os_reason(exc)}",
                          EXIT_TRANSPORT_FAILURE)
    return QuietError(f"discovery on portal {name} failed: {exc or type(exc).__name__}",
                      EXIT_GENERIC)


@dataclass
class MountConfig:
    """What the config dir gives one mount (see ``load_config``)."""

    db: Any
    records: Any
    default_options: Any          # net.initiator.NodeOptions from iscsid.conf (+ mount options)
    node_options: Callable[..., Any]
    discovery_chap_for: Callable[[Any], Any]


def _override(options: Any, opts: MountOptions) -> Any:
    """NodeOptions with the mount's explicit options applied on top."""
    timeouts, params = options.timeouts, options.login_params
    if opts.timeouts and timeouts is not None:
        timeouts = dataclasses.replace(timeouts, **opts.timeouts)
    digests = {k: v for k, v in (("header_digest", opts.header_digest),
                                 ("data_digest", opts.data_digest)) if v is not None}
    if digests and params is not None:
        params = dataclasses.replace(params, **digests)
    return dataclasses.replace(options, timeouts=timeouts, login_params=params)


def load_config(opts: MountOptions) -> MountConfig:
    """Read CONFIG_DIR (and /etc/iscsi with open_iscsi). QuietError (exit 7) if it's bad.
    Warnings (unknown keys, weak secrets: never the secret itself) are logged."""
    from iscsifs.config import NodeDB, NodeSettings
    from iscsifs.fs.records import NodeRecords
    from iscsifs.nodeopts import node_options_from_db, node_options_from_settings
    try:
        db = NodeDB(opts.config_dir, use_open_iscsi=opts.open_iscsi,
                    open_iscsi_dir=OPEN_ISCSI_DIR)
        where = " + ".join(str(s) for s in db.sources) or None
        settings = NodeSettings.from_keys(db.defaults, strict=False)
        warnings = list(db.warnings) + settings.warnings
        db.warnings.clear()
        default_options = _override(node_options_from_settings(settings, where), opts)
        for portal in opts.portals:      # fail now, not at the first listing
            dsettings = db.discovery_settings(portal, strict=False)
            warnings += [w for w in dsettings.warnings if w not in warnings]
            dsettings.check()
    except ConfigError as exc:
        raise QuietError(str(exc), EXIT_INVALID_ARGUMENT) from None
    except OSError as exc:
        raise QuietError(f"{opts.config_dir}: {exc.strerror or exc}",
                         EXIT_INVALID_ARGUMENT) from None
    for warning in warnings:
        log.warning("%s", warning)
    from_db = node_options_from_db(db)

    def node_options(target: str, portal: Any) -> Any:
        found = from_db(target, portal)
        return None if found is None else _override(found, opts)

    return MountConfig(db=db, records=NodeRecords(db, nodiscovery=opts.nodiscovery),
                       default_options=default_options, node_options=node_options,
                       discovery_chap_for=db.discovery_chap)


def _make_initiator(opts: MountOptions, initiator_name: str, nursery: Any,
                    config: MountConfig | None = None) -> Any:
    try:
        from iscsifs.net.initiator import Initiator
    except ImportError as exc:
        raise QuietError(f"the iSCSI layer is not available ({exc})", EXIT_GENERIC) from None
    if config is None:
        config = load_config(opts)
    defaults = config.default_options
    return Initiator(initiator_name=initiator_name, portals=list(opts.portals),
                     nursery=nursery, timeouts=defaults.timeouts,
                     login_params=defaults.login_params, chap=defaults.chap,
                     queue_depth=defaults.queue_depth or 32,
                     read_only=opts.read_only, node_options=config.node_options,
                     discovery_chap_for=config.discovery_chap_for,
                     on_discovered=config.records.record_discovery)


async def run_mount(opts: MountOptions, reporter: _Reporter,
                    make_initiator: Callable[..., Any] | None = None) -> None:
    """Check portals, mount, serve until unmounted or signalled, log out, unmount."""
    import pyfuse3
    import trio
    from iscsifs.fs.ops import Operations
    from iscsifs.fs.tree import Tree

    initiator_name = resolve_initiator_name(opts)
    for warning in opts.warnings:
        log.warning("%s", warning)
    config = load_config(opts)
    login_timeout = float(config.default_options.timeouts.login) or 15.0
    logout_timeout = float(config.default_options.timeouts.logout) or 15.0
    for portal in opts.portals:
        await check_portal_tcp(portal, login_timeout)

    fuse_mounted = False
    terminated = False

    def close_fuse() -> None:
        if fuse_mounted:
            log.debug("unmounting %s", opts.mountpoint)
            pyfuse3.close(unmount=True)

    async def logout_all(initiator: Any) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(logout_timeout + 5) as scope:
                try:
                    await initiator.aclose()
                except Exception:
                    log.exception("logging out failed")
            if scope.cancelled_caught:
                log.warning("logging out took longer than %g s; giving up", logout_timeout)

    async def watch_signals(nursery: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal terminated
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("%s received: unmounting", signal.Signals(signum).name)
                terminated = True
                if fuse_mounted:
                    pyfuse3.terminate()      # pyfuse3.main() returns; cleanup follows
                else:
                    nursery.cancel_scope.cancel()   # stop discovery; nothing is mounted
                return

    async with contextlib.AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        stack.callback(close_fuse)                       # runs after logout_all
        await nursery.start(watch_signals, nursery)
        if make_initiator is None:
            initiator = _make_initiator(opts, initiator_name, nursery, config)
        else:
            initiator = make_initiator(opts, initiator_name, nursery)
        stack.push_async_callback(logout_all, initiator)
        for portal in opts.portals if not opts.nodiscovery else ():
            try:
                with trio.fail_after(login_timeout + 5):
                    await initiator.discover(portal)
            except Exception as exc:
                log.debug("discovery on %s failed", portal, exc_info=True)
                error = _discovery_error(portal, exc)
                if not config.records.targets_at(portal, static_only=False):
                    raise error from None
                # targets that refuse discovery: their node records are listed instead
                log.warning("%s; listing the node records of that portal", error)
        tree = Tree(opts.portals)
        ops = Operations(initiator, tree, initiator_name=initiator_name,
                         read_only=opts.read_only, cache=opts.cache,
                         records=config.records, kernel_notify=True)
        if terminated:
            return
        try:
            pyfuse3.init(ops, opts.mountpoint, fuse_options(opts))
        except Exception as exc:
            raise QuietError(f"cannot mount on {opts.mountpoint}: {exc}", EXIT_GENERIC) from None
        fuse_mounted = True
        log.info("mounted %s on %s (iscsifs %s, initiator %s)", opts.spec, opts.mountpoint,
                 __version__, initiator_name)
        reporter.ready()
        # Keep idle FUSE workers around: with pyfuse3's default (1), every burst of parallel
        # requests spawns tasks that exit again at once (measured: 1 spawn per 3 requests).
        await pyfuse3.main(min_tasks=FUSE_IDLE_WORKERS, max_tasks=FUSE_MAX_WORKERS)
        log.info("file system loop ended; logging out")


# -- entry points ----------------------------------------------------------------------------
def _print_error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _run_foreground(opts: MountOptions) -> int:
    import trio
    setup_logging(opts, to_stderr=True)
    try:
        trio.run(run_mount, opts, _Reporter(None))
    except BaseException as exc:   # noqa: BLE001 - the last resort: one line + log
        quiet = _quiet_error_in(exc)
        if quiet is not None:
            _print_error(str(quiet))
            return quiet.exit_code
        if isinstance(exc, KeyboardInterrupt):
            return 130
        log.error("internal error", exc_info=exc)
        _print_error(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_GENERIC
    return 0


def _daemonize(opts: MountOptions) -> int:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:                                               # parent: wait for "mounted"
        os.close(write_fd)
        chunks = []
        while True:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_fd)
        text = b"".join(chunks).decode("utf-8", "replace").strip()
        if text == "OK":
            return 0
        if text.startswith("ERR "):
            _, code, message = (text.split(" ", 2) + [""])[:3]
            _print_error(message)
            return int(code) if code.isdigit() else EXIT_GENERIC
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        _print_error("the mount daemon exited before the file system was ready")
        return EXIT_GENERIC

    # child: the daemon
    code = 0
    try:
        os.close(read_fd)
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        out = devnull
        if opts.logfile:
            out = os.open(opts.logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)          # libfuse writes its own messages to fd 2
        setup_logging(opts, to_stderr=False)
        reporter = _Reporter(write_fd)
        import trio
        try:
            trio.run(run_mount, opts, reporter)
        except BaseException as exc:  # noqa: BLE001
            quiet = _quiet_error_in(exc)
            if quiet is not None:
                log.error("%s", quiet)
                reporter.error(quiet.exit_code, str(quiet))
                code = quiet.exit_code
            else:
                log.error("internal error", exc_info=exc)
                reporter.error(EXIT_GENERIC, f"internal error: {type(exc).__name__}: {exc}")
                code = EXIT_GENERIC
        else:
            reporter.error(EXIT_GENERIC, "the file system ended before it was ready")
        logging.shutdown()
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(args)
        check_mountpoint(opts.mountpoint)
    except QuietError as exc:
        if exc.exit_code == 0:
            print(str(exc))
        else:
            _print_error(str(exc))
        return exc.exit_code
    if opts.foreground:
        return _run_foreground(opts)
    return _daemonize(opts)


if __name__ == "__main__":
    sys.exit(main())
