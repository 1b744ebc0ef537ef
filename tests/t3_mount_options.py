"""mount.iscsifs option parsing and its failures: one line on stderr, exit code, nothing mounted.

The parsing tests are pure. The subprocess tests run the real helper with inputs that must fail
before anything is mounted (they need neither tgtd nor /dev/fuse).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_iscsifs

from iscsifs.config import locations
from iscsifs.core.names import Portal
from iscsifs.errors import EXIT_INVALID_ARGUMENT, EXIT_TRANSPORT_FAILURE, ConfigError, QuietError
from iscsifs.exits import exit_code
from iscsifs.mount.config import load_config, resolve_initiator_name
from iscsifs.mount.lifetime import fuse_options
from iscsifs.mount.options import MountOptions, parse_args

HELPER = Path(__file__).resolve().parent.parent / "mount.iscsifs"


def parse(*argv: str) -> MountOptions:
    return parse_args(list(argv))


def test_basic(tmp_path):
    opts = parse("127.0.0.1:3260", str(tmp_path))
    assert opts.portals == [Portal("127.0.0.1", 3260)]
    assert opts.mountpoint == str(tmp_path)
    assert not opts.read_only and not opts.foreground and opts.cache == "auto" and opts.read_ahead_kb == 1024


def test_several_portals_and_ipv6(tmp_path):
    opts = parse("127.0.0.1,[::1]:3261,localhost:3262,127.0.0.1:3260", str(tmp_path))
    assert opts.portals == [Portal("127.0.0.1", 3260), Portal("::1", 3261),
                            Portal("localhost", 3262)]


def test_options(tmp_path):
    opts = parse("127.0.0.1", str(tmp_path), "-o",
                 "ro,initiator_name=iqn.2016-04.com.open-iscsi:ab,allow_other,cache=page,"
                 "login_timeout=3,noop_out_interval=0,noop_out_timeout=2,"
                 "replacement_timeout=-1,command_timeout=9,logout_timeout=4,"
                 "abort_timeout=5,lu_reset_timeout=6,tgt_reset_timeout=7,"
                 "config_dir=/tmp,header_digest=CRC32C+None,data_digest=crc32c",
                 "-o", "nosuid,nodev,noexec,relatime")
    assert opts.read_only and opts.allow_other and opts.cache == "page"
    assert opts.initiator_name == "iqn.2016-04.com.open-iscsi:ab"
    assert opts.timeouts == {"login": 3, "noop_out_interval": 0, "noop_out_timeout": 2,
                             "replacement_timeout": -1, "command": 9, "logout": 4,
                             "abort": 5, "lu_reset": 6, "tgt_reset": 7}
    assert opts.config_dir == "/tmp"
    assert opts.header_digest == "CRC32C,None" and opts.data_digest == "CRC32C"
    assert opts.max_sectors_kb == 512
    assert parse("127.0.0.1", str(tmp_path), "-o", "max_sectors_kb=64").max_sectors_kb == 64
    assert opts.multipath == "failover"
    assert parse("127.0.0.1", str(tmp_path), "-o", "multipath=round-robin").multipath == \
        "round-robin"
    fuse = fuse_options(opts)
    assert {"fsname=iscsifs", "subtype=iscsifs", "default_permissions", "allow_other", "ro",
            "nosuid", "nodev", "noexec"} <= fuse
    assert "relatime" not in fuse          # libfuse 3 rejects it; the kernel default anyway
    assert not any(o.startswith("max_read") for o in fuse)


def test_last_of_ro_rw_wins(tmp_path):
    assert parse("127.0.0.1", str(tmp_path), "-o", "ro,rw").read_only is False
    assert parse("127.0.0.1", str(tmp_path), "-o", "rw", "-o", "ro").read_only is True
    assert "rw" in fuse_options(parse("127.0.0.1", str(tmp_path)))


def test_fstab_only_options_are_ignored(tmp_path):
    opts = parse("127.0.0.1", str(tmp_path), "-o",
                 "defaults,_netdev,noauto,auto,nofail,user,users,x-systemd.automount,"
                 "x-systemd.device-timeout=10,comment=systemd.automount")
    assert not opts.read_only and not opts.fuse_options
    assert "_netdev" in opts.ignored and "comment=systemd.automount" in opts.ignored


def test_foreground_and_debug_flags(tmp_path):
    assert parse("127.0.0.1", str(tmp_path), "-f").foreground
    opts = parse("127.0.0.1", str(tmp_path), "-d")
    assert opts.debug and opts.foreground
    opts = parse("127.0.0.1", str(tmp_path), "-o", "debug")
    assert opts.debug and opts.foreground
    assert parse("127.0.0.1", str(tmp_path), "-o", "foreground").foreground
    # what mount(8) may add: -n (no mtab), -v (verbose), -t type
    opts = parse("-n", "-v", "-t", "iscsifs", "127.0.0.1", str(tmp_path), "-o", "rw")
    assert opts.verbose and not opts.foreground


@pytest.mark.parametrize("argv, fragment", [
    (["127.0.0.1", "MP", "-o", "bogus"], "unknown option 'bogus'"),
    (["127.0.0.1", "MP", "-o", "password=secret123"], "unknown option 'password'"),
    (["127.0.0.1", "MP", "-o", "cache=weird"], "bad value for cache"),
    (["127.0.0.1", "MP", "-o", "multipath=multibus"], "bad value for multipath: 'multibus' "
                                                       "(expected failover or round-robin)"),
    (["127.0.0.1", "MP", "-o", "login_timeout=soon"], "bad value for login_timeout"),
    (["127.0.0.1", "MP", "-o", "noop_out_timeout=-1"], "must not be negative"),
    (["127.0.0.1", "MP", "-o", "header_digest=md5"], "bad value for header_digest"),
    (["127.0.0.1", "MP", "-o", "max_sectors_kb=2048"], "bad value for max_sectors_kb"),
    (["127.0.0.1", "MP", "-o", "max_sectors_kb=lots"], "expected a number of KiB"),
    (["127.0.0.1", "MP", "-o", "initiator_name="], "needs a value"),
    (["127.0.0.1:abc", "MP"], "bad portal '127.0.0.1:abc'"),
    (["[::1", "MP"], "bad portal"),
    (["127.0.0.1,,127.0.0.2", "MP"], "empty entry"),
    (["127.0.0.1"], "expected PORTAL"),
    (["127.0.0.1", "MP", "extra"], "expected PORTAL"),
    (["127.0.0.1", "MP", "-x"], "option -x not recognized"),
    (["127.0.0.1", "MP", "-t", "nfs"], "iscsifs only"),
])
def test_bad_input_is_one_clean_error(argv, fragment, tmp_path):
    argv = [str(tmp_path) if a == "MP" else a for a in argv]
    with pytest.raises(QuietError) as info:
        parse_args(argv)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "secret123" not in message        # an option value is never echoed for unknown keys
    assert info.value.exit_code == EXIT_INVALID_ARGUMENT


def test_sloppy_only_warns(tmp_path):
    opts = parse("-s", "127.0.0.1", str(tmp_path), "-o", "bogus,ro")
    assert opts.read_only and any("bogus" in w for w in opts.warnings)


def test_initiator_name_sources(tmp_path):
    opts = parse("127.0.0.1", str(tmp_path), "-o", "initiator_name=iqn.2016-04.org.x:y")
    assert resolve_initiator_name(opts) == "iqn.2016-04.org.x:y"
    with pytest.raises(ConfigError, match="bad initiator_name") as bad:
        resolve_initiator_name(parse("127.0.0.1", str(tmp_path),
                                           "-o", "initiator_name=not-an-iqn"))
    assert exit_code(bad.value) == EXIT_INVALID_ARGUMENT
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "initiatorname.iscsi").write_text("# comment\nInitiatorName=iqn.2016-04.org.x:z\n")
    opts = parse("127.0.0.1", str(tmp_path), "-o", f"config_dir={conf}")
    assert resolve_initiator_name(opts) == "iqn.2016-04.org.x:z"
    opts = parse("127.0.0.1", str(tmp_path), "-o", f"config_dir={tmp_path / 'empty'}")
    with pytest.raises(QuietError, match="not a directory"):
        resolve_initiator_name(opts)
    (tmp_path / "empty").mkdir()
    name = resolve_initiator_name(opts)
    assert name.startswith("iqn.2016-04.com.open-iscsi:") and opts.warnings


def test_help_names_every_option_the_parser_accepts_as_the_man_page_does():
    """--help lacked loud and silent, which the man page lists; now both list every option
    that is accepted and ignored or passed to the kernel, and what 0 means for the NOP
    timers."""
    from iscsifs.mount.options import FUSE_DROPPED, FUSE_PASSTHROUGH, IGNORED_OPTIONS, OPTION_HELP
    man = (Path(__file__).resolve().parent.parent / "man" / "mount.iscsifs.8").read_text()
    docs = (Path(__file__).resolve().parent.parent / "docs" / "mount-options.md").read_text()
    words = set(OPTION_HELP.split())

    def named(option: str, text: str) -> bool:
        return re.search(rf"(?<![\w=-]){re.escape(option)}(?![\w=-])", text) is not None

    for option in sorted(IGNORED_OPTIONS | FUSE_PASSTHROUGH | FUSE_DROPPED):
        assert option in words, option
        assert named(option, man) and named(option, docs), option
    for option in ("x-*", "comment=*"):
        assert option in words
    assert "noop_out_timeout waits for" in OPTION_HELP
    assert "0: a NOP-Out is waited for" in docs and "0: a NOP-Out is waited for" in man


def test_help_and_version():
    with pytest.raises(QuietError) as info:
        parse_args(["--help"])
    assert info.value.exit_code == 0 and "cache=auto|direct|page" in str(info.value)
    assert "multipath=failover|round-robin" in str(info.value)
    with pytest.raises(QuietError) as info:
        parse_args(["-V"])
    assert info.value.exit_code == 0 and "iscsifs" in str(info.value)


# -- the real helper as a subprocess -----------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def run_helper(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("case", ["unknown-option", "bad-portal", "refused", "refused-ipv6",
                                  "refused-foreground", "no-mountpoint", "not-a-dir",
                                  "bad-initiator-name"])
def test_helper_fails_cleanly(case, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    port = _closed_port()
    args, code, fragment = {
        "unknown-option": ([f"127.0.0.1:{port}", str(mp), "-o", "ro,bogus"],
                           EXIT_INVALID_ARGUMENT, "unknown option 'bogus'"),
        "bad-portal": (["127.0.0.1:99999", str(mp)], EXIT_INVALID_ARGUMENT, "bad portal"),
        "refused": ([f"127.0.0.1:{port}", str(mp), "-o", "_netdev,nofail,login_timeout=5"],
                    EXIT_TRANSPORT_FAILURE,
                    f"cannot connect to 127.0.0.1:{port}: Connection refused"),
        "refused-ipv6": ([f"[::1]:{port}", str(mp)], EXIT_TRANSPORT_FAILURE,
                         f"cannot connect to [::1]:{port}: Connection refused"),
        "refused-foreground": ([f"127.0.0.1:{port}", str(mp), "-f", "-o",
                                "initiator_name=iqn.2016-04.org.x:y"],
                               EXIT_TRANSPORT_FAILURE, "cannot connect"),
        "no-mountpoint": ([f"127.0.0.1:{port}", str(tmp_path / "nope")], EXIT_INVALID_ARGUMENT,
                          "does not exist"),
        "not-a-dir": ([f"127.0.0.1:{port}", str(tmp_path / "file")], EXIT_INVALID_ARGUMENT,
                      "not a directory"),
        "bad-initiator-name": ([f"127.0.0.1:{port}", str(mp), "-o", "initiator_name=x"],
                               EXIT_INVALID_ARGUMENT, "bad initiator_name"),
    }[case]
    (tmp_path / "file").write_text("")
    result = run_helper(*args)
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mount.iscsifs: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not _mounted(mp)


def test_a_log_file_in_a_directory_that_does_not_exist_is_refused_and_nothing_made(tmp_path):
    """logfile=/nonexistent/dir/x.log used to create /nonexistent/dir (as root) and mount: a
    file the user names must be where they say (exit 7, nothing created). The default
    directory (LOG_DIR) is still made when missing."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    port = _closed_port()
    for where, why in ((tmp_path / "nodir" / "deeper", "does not exist"),
                       (tmp_path / "afile", "is not a directory")):
        log = where / "x.log"
        (tmp_path / "afile").write_text("")
        result = run_helper(f"127.0.0.1:{port}", str(mp), "-o", f"logfile={log}")
        assert result.returncode == EXIT_INVALID_ARGUMENT, result.stderr
        assert result.stderr == f"mount.iscsifs: cannot open log file {log}: {where} {why}\n"
        assert not (tmp_path / "nodir").exists()
        assert (tmp_path / "afile").is_file() and not _mounted(mp)


@pytest.mark.parametrize("flags", [[], ["-f"], ["-f", "-o", "logfile={log}"]])
def test_sloppy_warns_on_the_terminal_once(tmp_path, flags):
    """-s: an unknown option is a warning, and the user sees it (a daemon's warning went to
    its log file only); once, whether the log is stderr (foreground) or a file."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    port = _closed_port()
    flags = [f.format(log=tmp_path / "x.log") for f in flags]
    result = run_helper(f"127.0.0.1:{port}", str(mp), "-s", "-o",
                        "bogus=1,initiator_name=iqn.2016-04.org.x:y", *flags)
    assert result.returncode == EXIT_TRANSPORT_FAILURE, result.stderr
    lines = result.stderr.splitlines()
    assert [line for line in lines if "ignoring unknown option 'bogus'" in line] == \
        [lines[0]], lines
    if "-f" not in flags or "-o" in flags:
        assert lines[0] == "mount.iscsifs: warning: ignoring unknown option 'bogus'"
        assert lines[1:] == [f"mount.iscsifs: cannot connect to 127.0.0.1:{port}: "
                             "Connection refused"]
    if "-o" in flags:
        assert "ignoring unknown option 'bogus'" in (tmp_path / "x.log").read_text()


UNRESOLVABLE = "nosuchhost.invalid"       # RFC 2606: never resolves


def test_a_name_that_does_not_resolve_reads_the_same_for_mount_and_discover(tmp_path):
    """One message for one failure: mount.iscsifs's portal check said "Unknown error -2"
    where iscsifs discover said "cannot resolve ..."; both now connect the same way and say
    iscsiadm's "cannot resolve host name", exit 4."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    mounted = run_helper(UNRESOLVABLE, str(mp), "-o", f"config_dir={tmp_path}")
    discovered = run_iscsifs(tmp_path, "discover", UNRESOLVABLE, "--no-record")
    why = f"cannot connect to {UNRESOLVABLE}:3260: cannot resolve host name {UNRESOLVABLE} ("
    assert mounted.returncode == discovered.returncode == EXIT_TRANSPORT_FAILURE
    [mount_line] = mounted.stderr.splitlines()
    [discover_line] = discovered.stderr.splitlines()
    assert mount_line.startswith(f"mount.iscsifs: {why}"), mount_line
    assert discover_line.startswith(
        f"iscsifs: discovery on portal {UNRESOLVABLE}:3260 failed: {why}"), discover_line
    assert mount_line.split(": ", 1)[1] == discover_line.split(" failed: ", 1)[1]
    assert "Unknown error" not in mount_line + discover_line
    assert not _mounted(mp)


# -- the config dir a mount reads --------------------------------------------------------
def test_open_iscsi_option_reads_etc_iscsi(tmp_path, monkeypatch):
    etc = tmp_path / "etc-iscsi"
    etc.mkdir()
    (etc / "initiatorname.iscsi").write_text("InitiatorName=iqn.1993-08.org.debian:01:abc\n")
    (etc / "iscsid.conf").write_text("node.conn[0].timeo.noop_out_interval = 11\n")
    monkeypatch.setattr(locations, "OPEN_ISCSI_DIR", str(etc))
    ours = tmp_path / "ours"
    ours.mkdir()
    opts = parse_args(["127.0.0.1", str(tmp_path), "-o", f"config_dir={ours},open_iscsi"])
    assert opts.open_iscsi and opts.config_dir == str(ours)
    assert resolve_initiator_name(opts) == "iqn.1993-08.org.debian:01:abc"
    assert not (ours / "initiatorname.iscsi").exists()     # theirs is used, never copied
    config = load_config(opts)
    assert config.default_options.timeouts.noop_out_interval == 11
    # ours wins over theirs; without open_iscsi theirs is not read at all
    (ours / "iscsid.conf").write_text("node.conn[0].timeo.noop_out_interval = 12\n")
    assert load_config(opts).default_options.timeouts.noop_out_interval == 12
    (ours / "iscsid.conf").unlink()
    plain = parse_args(["127.0.0.1", str(tmp_path), "-o", f"config_dir={ours}"])
    assert load_config(plain).default_options.timeouts.noop_out_interval == 5
    name = resolve_initiator_name(plain)             # generated and saved in ours
    assert (ours / "initiatorname.iscsi").read_text().count(name) == 1
    assert (etc / "initiatorname.iscsi").read_text().count("debian") == 1



def test_default_config_dir_is_ours(monkeypatch, tmp_path):
    monkeypatch.setenv("ISCSIFS_CONFIG_DIR", str(tmp_path / "state"))
    opts = parse_args(["127.0.0.1", str(tmp_path)])
    assert opts.config_dir == str(tmp_path / "state")
    monkeypatch.delenv("ISCSIFS_CONFIG_DIR")
    opts = parse_args(["127.0.0.1", str(tmp_path)])
    assert opts.config_dir != "/etc/iscsi"
    if os.geteuid() == 0:
        assert opts.config_dir == "/etc/iscsifs"


def test_an_iscsifs_error_is_never_an_internal_error_with_a_class_name():
    """What escapes the mount as one of our errors is its own line and exit code, not
    "internal error: RemoteProtocolError: ..." with exit 1."""
    from iscsifs.exits import quiet_error
    from iscsifs.errors import RemoteProtocolError, SessionFailed
    from iscsifs.mount.main import _failure
    err = _failure(ExceptionGroup("nursery", [RemoteProtocolError("text item without '='")]))
    assert (str(err), err.exit_code) == ("text item without '='", 19)
    assert "Error" not in str(quiet_error(SessionFailed("session to X was logged out")))


def test_isns_and_source_address_options(tmp_path):
    mp = str(tmp_path)
    o = parse_args(["isns", mp, "-o", "isns=10.0.0.1,source_address=10.0.0.20"])
    assert o.portals == [] and o.isns == Portal("10.0.0.1", 3205)
    assert o.source_address == "10.0.0.20"
    o = parse_args(["10.0.0.5", mp, "-o", "isns=[fe80::1]:3206,source_address=[fe80::2]"])
    assert o.portals == [Portal("10.0.0.5")] and o.isns == Portal("fe80::1", 3206)
    assert o.source_address == "fe80::2"
    for argv, fragment in (
            (["isns", mp], "PORTAL 'isns' needs -o isns=HOST[:PORT]"),
            (["isns", mp, "-o", "isns="], "isns= needs the iSNS server"),
            (["isns", mp, "-o", "isns=a:b"], "bad portal"),
            (["10.0.0.5", mp, "-o", "source_address=eth0"],
             "bad value for source_address: 'eth0'")):
        with pytest.raises(QuietError) as info:
            parse_args(argv)
        assert info.value.exit_code == EXIT_INVALID_ARGUMENT
        assert fragment in str(info.value)


def test_source_address_precedence(tmp_path):
    """mount option > node record > iscsid.conf, as for every other setting."""
    from iscsifs.config.nodedb import NodeDB
    (tmp_path / "iscsid.conf").write_text("iface.ipaddress = 127.0.0.3\n")
    db = NodeDB(tmp_path)
    db.add("iqn.2026-11.org.example:a", ("10.0.0.5", 3260, 1))
    db.update("iqn.2026-11.org.example:a", ("10.0.0.5", 3260, 1), "iface.ipaddress",
              "127.0.0.4")
    mp = str(tmp_path / "mnt")
    base = f"config_dir={tmp_path},initiator_name=iqn.2026-11.org.example:i"
    config = load_config(parse_args(["10.0.0.5", mp, "-o", base]))
    assert config.default_options.source_address == "127.0.0.3"
    assert config.node_options("iqn.2026-11.org.example:a", Portal("10.0.0.5")) \
        .source_address == "127.0.0.4"
    config = load_config(parse_args(["10.0.0.5", mp, "-o", base + ",source_address=127.0.0.2"]))
    assert config.default_options.source_address == "127.0.0.2"
    assert config.node_options("iqn.2026-11.org.example:a", Portal("10.0.0.5")) \
        .source_address == "127.0.0.2"
