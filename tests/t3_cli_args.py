"""``iscsifs``'s command line as a new user meets it: a bad one is one line on stderr,
``iscsifs: <what is wrong> (see iscsifs ... --help)``, and exit 7 (iscsiadm's "invalid
argument", what mount.iscsifs and the man page promise), not argparse's usage and exit 2;
``--help`` still prints the whole usage and exits 0. Run in this process (``run_iscsifs``)."""

from __future__ import annotations

import pytest

from helpers import one_error_line, run_iscsifs

from iscsifs.errors import EXIT_INVALID_ARGUMENT


@pytest.mark.parametrize("args,says", [
    (["frobnicate"], "unknown command 'frobnicate' (choose from "),
    ([], "no command given (see iscsifs --help)"),
    (["session", "-r", "abc"], "argument -r/--sid: invalid int value: 'abc' "
                               "(see iscsifs session --help)"),
    (["node", "-o", "frobnicate"], "argument -o/--op: invalid choice: 'frobnicate'"),
    (["login", "-L", "bogus"], "argument -L/--loginall: invalid choice: 'bogus'"),
    (["discard"], "the following arguments are required: PATH (see iscsifs discard --help)"),
    (["session", "--frob"], "unrecognized arguments: --frob"),
    (["discover"], "the following arguments are required: portal"),
])
def test_a_bad_command_line_is_one_line_and_exit_7(tmp_path, args, says):
    r = run_iscsifs(tmp_path, *args)
    line = one_error_line(r, EXIT_INVALID_ARGUMENT)
    assert says in line, line
    assert line.endswith("--help)"), line
    assert r.stdout == "" and "usage:" not in r.stderr


@pytest.mark.parametrize("args,usage", [
    (["--help"], "usage: iscsifs [-h]"), (["session", "--help"], "usage: iscsifs session"),
    (["node", "-h"], "usage: iscsifs node"),
])
def test_help_still_prints_the_whole_usage_and_exits_0(tmp_path, args, usage):
    r = run_iscsifs(tmp_path, *args)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith(usage) and len(r.stdout.splitlines()) > 5
    if args == ["--help"]:
        for command in ("discover", "iname", "node", "discovery", "login", "discard",
                        "session"):
            assert command in r.stdout


def test_a_config_dir_that_is_a_file_is_refused_as_the_mount_refuses_it(tmp_path):
    """It used to say "no records found" (21) where mount.iscsifs says "not a directory"."""
    afile = tmp_path / "file"
    afile.write_text("")
    r = run_iscsifs(afile, "node")
    assert one_error_line(r, EXIT_INVALID_ARGUMENT) == \
        f"iscsifs: config dir {afile} is not a directory"
    # one that does not exist yet is fine: nothing to list, and -o new creates it
    r = run_iscsifs(tmp_path / "new", "node")
    assert one_error_line(r, 21) == "iscsifs: no records found"
