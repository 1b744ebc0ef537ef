"""open-iscsi's ``key = value`` files: iscsid.conf, node ``default`` records, ``st_config``.

Owns: parsing (``parse_conf``, ``read_conf``: every value checked, unknown keys as warnings),
rendering in open-iscsi's order between record markers (``render_record``), and writing a file
atomically with mode 0600 (``atomic_write``). Secrets never appear in a repr or an error.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from iscsifs.config.keys import (EMPTY, HIDDEN, KNOWN_KEYS, is_known_key, is_secret_key,
                                 validate_key)
from iscsifs.core.names import printable
from iscsifs.errors import ConfigError

RECORD_VERSION = "2.1.11"      # the open-iscsi version whose record layout we write


class ConfFile(dict):
    """The result of parse_conf: a ``dict[str, str]`` of validated values, plus
    ``warnings`` (unknown keys, duplicates), ``lines`` (key -> line number),
    ``path`` and ``record_version`` (from ``# BEGIN RECORD <ver>``, if any)."""

    def __init__(self, path: str | None = None):
        super().__init__()
        self.path = path
        self.warnings: list[str] = []
        self.lines: dict[str, int] = {}
        self.record_version: str | None = None

    def __repr__(self) -> str:
        shown = {k: (HIDDEN if is_secret_key(k) and v else v) for k, v in self.items()}
        return f"ConfFile({self.path!r}, {shown!r})"


_KEY_RE = re.compile(r"[A-Za-z0-9_.\[\]-]+")


def parse_conf(text: str, path: str | os.PathLike[str] | None = None) -> ConfFile:
    """Parse iscsid.conf / node record / st_config text.

    ``key = value`` (spaces around ``=`` optional), whole-line ``#`` comments (a ``#`` inside a
    value belongs to the value: secrets may contain one), blank lines, ``# BEGIN RECORD`` /
    ``# END RECORD`` markers, ``<empty>`` for an empty value. A malformed line or a bad value for
    a known key raises ConfigError naming file and line; unknown keys become warnings.
    """
    where = None if path is None else str(path)
    result = ConfFile(where)
    in_record = ended = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            marker = line.lstrip("#").strip()
            if marker.startswith("BEGIN RECORD"):
                if in_record or ended:
                    raise ConfigError("unexpected '# BEGIN RECORD'", where, lineno)
                in_record = True
                result.record_version = marker[len("BEGIN RECORD"):].strip() or None
            elif marker == "END RECORD":
                if not in_record:
                    raise ConfigError("'# END RECORD' without '# BEGIN RECORD'", where, lineno)
                in_record, ended = False, True
            continue
        if ended:
            raise ConfigError("text after '# END RECORD'", where, lineno)
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError("expected 'key = value'", where, lineno)
        if not key or not _KEY_RE.fullmatch(key):
            raise ConfigError(f"malformed key {printable(key)}", where, lineno)
        try:
            value = validate_key(key, value)
        except ValueError as exc:
            shown = "" if is_secret_key(key) else f" {printable(value)}"
            raise ConfigError(f"bad value{shown} for {key}: {exc}", where, lineno) from None
        if not is_known_key(key):
            result.warnings.append(
                f"{where or '<config>'}:{lineno}: unknown key {key} ignored")
        if key in result:
            result.warnings.append(
                f"{where or '<config>'}:{lineno}: {key} set again (line {result.lines[key]}); "
                "the last value wins")
        result[key] = value
        result.lines[key] = lineno
    if in_record:
        raise ConfigError("'# BEGIN RECORD' without '# END RECORD'", where, None)
    return result


def read_conf(path: str | os.PathLike[str]) -> ConfFile:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(path)) from None
    return parse_conf(text, path)


def render_record(keys: Mapping[str, str], *, hide_secrets: bool = True,
                  version: str | None = RECORD_VERSION) -> str:
    """``key = value`` text in open-iscsi's order, between record markers when ``version``.

    With ``hide_secrets`` passwords are shown as ``********`` (as ``iscsiadm -m node`` does).
    """
    lines = [f"# BEGIN RECORD {version}"] if version else []
    for key in _ordered(keys):
        value = keys[key]
        if hide_secrets and is_secret_key(key) and value:
            value = HIDDEN
        lines.append(f"{key} = {value if value != '' else EMPTY}")
    if version:
        lines.append("# END RECORD")
    return "\n".join(lines) + "\n"


def _ordered(keys: Iterable[str]) -> list[str]:
    order = {k: i for i, k in enumerate(KNOWN_KEYS)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

