"""Remote shell commands for the SSH source, and parsers for what they print.

Pure functions, no paramiko: the commands are plain POSIX ``sh`` with GNU
find/xargs/tar/sha256sum. Only configuration-derived strings (a root, prune
paths, glob patterns) ever appear on a command line, always through
:func:`shlex.quote`; paths that come from the source travel on the command's
stdin, NUL-separated, each prefixed with ``./`` (or absolute) so a name such
as ``-rf`` can never be taken for an option.

Every record printed by ``find -printf`` is seven NUL-terminated fields
(:data:`FIND_FORMAT`); a file name cannot contain NUL, so this framing is
exact for names with newlines, quotes or non-UTF-8 bytes. The one exception
is the stat's "unchanged" answer, a single byte between records
(:data:`UNCHANGED_MARK`).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterable, Iterator
from typing import Any

from spoolmig.transport.base import Entry, Kind, Names

#: type, permission bits (octal), size, inode, mtime (seconds.fraction), link target, path.
FIND_FORMAT = r"%y\0%m\0%s\0%i\0%T@\0%l\0%p\0"
FIELDS = 7
#: A stat answer for a path unchanged since a time (:func:`stat_stdin_script`): the one byte ``u``
#: (``%y`` never prints it), no path, no NUL. Answers come in the order asked, so a run of them
#: stands for as many paths; a vanished path prints nothing (:class:`._prepared.PreparedStat`).
UNCHANGED_MARK = "u"
_KINDS: dict[bytes, Kind] = {b"f": "f", b"d": "d", b"l": "l"}

#: Exit status a command uses to say "could not enter the root" (vs. root missing: 0, no output).
EXIT_NO_ROOT = 86


def _files0_test(also: str = "") -> str:
    """A command that succeeds where ``find`` reads its starting points from a file (GNU find from 4.9)
    and knows the predicates in ``also``; it reads no path. The probe's ``F`` line, and the stat
    script's own test where the probe's answer is not known yet (:func:`stat_stdin_script`)."""
    return f"find -files0-from /dev/null -maxdepth 0 {also + ' ' if also else ''}-quit 2>/dev/null"


#: Probe run once per connection: which GNU tools the account can use.
PROBE = (
    "find / -maxdepth 0 -printf 'P%y\\n' 2>/dev/null; "
    "printf 'a\\000' | xargs -0 -r printf 'X%s\\n' 2>/dev/null; "
    "tar --null --no-unquote --hard-dereference --format=posix --pax-option=delete=atime "
    "--version >/dev/null 2>&1 && echo T; "
    "printf '' | sha256sum >/dev/null 2>&1 && echo S; "
    "/bin/sh -c '[ \"$(printf ab | { head -c 1 >/dev/null; cat; })\" = b ] && echo H' 2>/dev/null; "
    f"{_files0_test()} && echo F; "
    "echo E"
)

#: stderr lines that only say a file vanished or changed under us: never fatal.
_BENIGN = re.compile(
    rb"(No such file or directory|Not a directory|file changed as we read it|"
    rb"File shrank by \d+ bytes?; padding with zeros|File removed before we read it|"
    rb"Exiting with failure status due to previous errors|Too many levels of symbolic links|"
    rb"exited with status \d+; aborting|No such file or directory\)?)$"
)


def wrap(script: str) -> str:
    """Run ``script`` under ``/bin/sh`` in the C locale whatever the login shell is (csh on BSD)."""
    return "exec /bin/sh -c " + shlex.quote("LC_ALL=C; export LC_ALL; " + script)


def enter(root: str) -> str:
    """Shell prefix: a missing root prints nothing and succeeds; an unreadable one fails."""
    q = shlex.quote(root)
    return f"[ -d {q} ] || exit 0; cd {q} || exit {EXIT_NO_ROOT}; "


#: First byte of a checked command's output (:func:`checked`): the ancestors were all real
#: directories and the command's own output follows / one was not, nothing was read.
CHECK_OK, CHECK_BAD = b"K", b"B"


def checked(check_bytes: int | None, files0: bool = False) -> str:
    """Shell prefix: the directory-symlink check, in the same remote command as what it protects.

    With ``check_bytes`` set, stdin starts with that many bytes of
    NUL-separated ``./`` ancestor directories, then the command's own list.
    ``head -c`` (exact on GNU, checked by :data:`PROBE`) takes the first part;
    if any of them is not a real directory any more (a symlink swapped in since
    the listing) the command prints :data:`CHECK_BAD` and reads nothing, else
    :data:`CHECK_OK` and runs. Only the byte count is on the command line.
    """
    if check_bytes is None:
        return ""
    return (f"b=$(head -c {int(check_bytes)} | {each_path('-maxdepth 0 ! -type d -printf x -quit', files0)}); "
            'if [ -n "$b" ]; then printf B; exit 0; fi; printf K; ')


def _glob_escape(path: bytes) -> str:
    """Quote glob metacharacters so ``find -path`` matches ``path`` literally."""
    text = path.decode("utf-8", "surrogateescape")
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def walk_command(root: str, only_dirs_and: Iterable[bytes], prune: Iterable[bytes]) -> str:
    """One streamed ``find`` for a whole tree, undated: everything (see :func:`walk_script`)."""
    return wrap(walk_script(root, only_dirs_and, prune))


#: Type field of the record that ends one tree's section in :func:`sections_command`'s output.
SECTION_END = b"="
#: A listing by name (:func:`list_command` with ``stat_globs``) prints a regular file that needs no
#: stat as one field, its depth and base name (``1cyrus.index`` is never one: ``1123.`` is), and
#: every other entry as an empty field (a name never is one) and a :data:`FIND_FORMAT` record whose
#: type has the depth before it: ``0d`` for each listed directory itself, which starts its entries.
NAMED_FORMAT = r"%d%f\0"
NAMED_RECORD = r"\0%d" + FIND_FORMAT


#: Index of the pseudo section-end record that carries the source's clock (see :func:`sections_command`).
CLOCK_SECTION = -1
#: Prints that record; ``date +%s`` is GNU and BSD, anything else (old Solaris) gives -1.
CLOCK_RECORD = ("t=$(date +%s 2>/dev/null); case $t in ''|*[!0-9]*) t=-1;; esac; "
                f"printf '=\\0%s\\0{CLOCK_SECTION}\\0\\0\\0\\0\\0' \"$t\"; ")


def sections_command(scripts: Iterable[str], probe: bool = False, stdin_section: int | None = None) -> str:
    """Several listings in one remote command (one shell start-up instead of one per tree).

    Each script (:func:`walk_script`, :func:`stat_stdin_script`) runs in a
    subshell; after it a record of seven fields, ``=``, its exit status, its
    index, and four empty ones, ends its section (``parse_records(...,
    sections=True)`` yields it as ``(index, status)``). Before them, such a
    record with index :data:`CLOCK_SECTION` carries the source's clock in
    whole seconds (``date +%s``; -1 where it has none). With ``probe``,
    :data:`PROBE`'s lines come first (up to its ``E`` line).

    ``stdin_section`` names the one script that reads the command's stdin.
    The scripts after it do not wait for it: they run beside it, their
    output held in a pipe (and they, once it is full) until its section
    has ended, so a walk of the configdirectory proceeds while this side
    still sends the stat its paths and reads its answers. The output keeps
    the scripts' order.
    """
    scripts = list(scripts)

    def section(i: int, script: str, stdin: str = "") -> str:
        return f"( {script} ){stdin}; printf '=\\0%d\\0%d\\0\\0\\0\\0\\0' \"$?\" {i}; "

    parts = [CLOCK_RECORD]
    if stdin_section is None or stdin_section >= len(scripts) - 1:
        parts += [section(i, script) for i, script in enumerate(scripts)]
    else:
        parts += [section(i, script) for i, script in enumerate(scripts[:stdin_section])]
        beside = "".join(section(i, scripts[i]) for i in range(stdin_section + 1, len(scripts)))
        parts.append(f"exec 4<&0; {{ {beside}}} </dev/null | "
                     f"{{ {section(stdin_section, scripts[stdin_section], ' <&4')}exec 4<&-; cat; }}; ")
    return wrap((PROBE + "; " if probe else "") + "".join(parts) + "exit 0")


def stat_stdin_script(since_s: int | None = None, files0: bool | None = None) -> str:
    """lstat of the absolute paths on the command's stdin, in order; a vanished one prints nothing.

    The one part of a :func:`sections_command` that reads its stdin. The
    paths span several trees, so they are absolute (:func:`stat_arg`): a
    path that starts with ``/`` is never taken for an option. With
    ``since_s`` (the source's clock, whole seconds) a path whose ctime is
    not later prints :data:`UNCHANGED_MARK` alone, where the source's
    ``find`` knows ``-newerct``; elsewhere every answer is a full one.
    ``files0`` says whether the source's ``find`` reads the paths itself
    (:func:`each_path`); None: not known yet (the command carries the
    capability probe), so the script finds out, with the one ``find`` it
    starts anyway to try ``-newerct``.
    """
    full = functools.partial(each_path, f"-maxdepth 0 -printf '{FIND_FORMAT}'")
    if since_s is None:
        if files0 is None:
            return f"if {_files0_test()}; then {full(True)}; else {full(False)}; fi"
        return full(files0)
    since = int(since_s)
    brief = functools.partial(
        each_path, f"-maxdepth 0 \\( -newerct @{since} -printf '{FIND_FORMAT}' -o -printf {UNCHANGED_MARK} \\)")
    if files0 is None:  # one find tries both: GNU find from 4.9 knows them, and goes the short way
        return (f"if {_files0_test(f'-newerct @{since}')}; then {brief(True)}; "
                f"else {_if_newerct(since, brief(False), full(False))}; fi")
    return _if_newerct(since, brief(files0), full(files0))


def _if_newerct(since: int, brief: str, full: str) -> str:
    """``brief`` where the source's ``find`` knows ``-newerct @since``, else ``full`` (never nothing)."""
    return f"if find / -maxdepth 0 -newerct @{since} -quit 2>/dev/null; then {brief}; else {full}; fi"


def stat_prefix(root: str) -> bytes:
    """What :func:`stat_arg` puts before a relative path of ``root``: the root, then ``/./``.

    A root is normalised and a relative path clean (no ``.`` parts), so the
    first ``/./`` of an answer's path tells where its root ends.
    """
    return root.rstrip("/").encode("utf-8", "surrogateescape") + b"/./"


def stat_arg(prefix: bytes, path: bytes) -> bytes:
    """The absolute argument for ``path`` (``b""``: the root itself, as ``root/.``)."""
    return prefix + path if path else prefix[:-1]


def walk_script(root: str, only_dirs_and: Iterable[bytes], prune: Iterable[bytes],
                since_s: int | None = None) -> str:
    """One streamed ``find`` for a whole tree; the cheap form stats only dirs and matches.

    GNU find takes the file type for ``-type d`` from ``d_type`` and needs no
    stat for ``-name``, so in the cheap form message files are never stat'ed.
    With ``since_s`` (the source's clock, whole seconds) only directories and
    entries whose ctime is later are printed, where the source's ``find``
    knows ``-newerct``; elsewhere all of them (see :meth:`Source.walk`).
    """
    expr = []
    pruned = [p for p in prune]
    if pruned:
        alts = " -o ".join(
            "-path " + shlex.quote("./" + _glob_escape(p)) for p in pruned if p
        )
        if b"" in pruned:
            return "exit 0"
        if alts:
            expr.append(f"\\( {alts} \\) -prune -o")
    fmt = shlex.quote(FIND_FORMAT)
    pats = [p for p in only_dirs_and]
    names = " -o ".join("-name " + shlex.quote(p.decode("utf-8", "surrogateescape")) for p in pats)
    if pats or since_s is not None:
        expr.append(f"-type d -printf {fmt} -o" + (f" \\( {names} \\)" if pats else ""))
    full = "exec find . " + " ".join([*expr, f"-printf {fmt}"])
    if since_s is None:
        return enter(root) + full
    since = int(since_s)
    brief = "exec find . " + " ".join([*expr, f"-newerct @{since} -printf {fmt}"])
    return enter(root) + _if_newerct(since, brief, full)


def each_path(find_args: str, files0: bool) -> str:
    """``find`` with ``find_args`` on every path of stdin's NUL-separated list, in order.

    With ``files0`` (the source's ``find`` has ``-files0-from``, probed) find
    reads the list itself: one process. Else ``xargs`` feeds it to a shell
    that puts the paths before the expression: three processes, and a
    shell and a find more per batch of arguments. On the bench's two cores
    the processes saved were 5-6 % of an incremental pass (BENCHMARKS.md).
    """
    if files0:
        return f"exec find -files0-from - {find_args}"
    return "exec xargs -0 -r /bin/sh -c " + shlex.quote(f'exec find "$@" {find_args}') + " sh"


def stat_command(root: str, check_bytes: int | None = None, *, files0: bool = False) -> str:
    return wrap(enter(root) + checked(check_bytes, files0) + each_path(f"-maxdepth 0 -printf '{FIND_FORMAT}'", files0))


def list_command(root: str, check_bytes: int | None = None, stat_globs: Iterable[bytes] | None = None, *,
                 files0: bool = False) -> str:
    """The entries inside each listed directory; with ``stat_globs``, other regular files by name only.

    Without ``stat_globs`` every entry is a :data:`FIND_FORMAT` record
    (:func:`parse_records`); with them the output is a listing by name
    (:data:`NAMED_FORMAT`, :func:`parse_named`). A name needs no stat on the
    source (``-type`` comes from ``d_type``, ``-name`` and ``%f`` from the
    directory) and costs this side no Python per name: a directory's names
    come as a run of fields, taken whole.
    """
    if stat_globs is None:
        return wrap(enter(root) + checked(check_bytes, files0)
                    + each_path(f"-mindepth 1 -maxdepth 1 -printf '{FIND_FORMAT}'", files0))
    globs = " -o ".join("-name " + shlex.quote(g.decode("utf-8", "surrogateescape")) for g in stat_globs)
    plain = f"-type f ! \\( {globs} \\)" if globs else "-type f"
    return wrap(enter(root) + checked(check_bytes, files0)
                + each_path(f"-maxdepth 1 \\( {plain} -printf '{NAMED_FORMAT}' \\) -o -printf '{NAMED_RECORD}'",
                            files0))


def not_dirs_command(root: str, *, files0: bool = False) -> str:
    """Print which of the listed ancestor directories are no longer real directories (e.g. symlinks)."""
    return wrap(enter(root) + each_path("-maxdepth 0 ! -type d -printf '%p\\0'", files0))


def ancestors(paths: Iterable[bytes]) -> list[bytes]:
    """Every proper ancestor directory of the paths (not the root), each once, in order."""
    seen: dict[bytes, None] = {}
    for p in paths:
        parts = p.split(b"/")[:-1]
        for i in range(1, len(parts) + 1):
            seen.setdefault(b"/".join(parts[:i]), None)
    return list(seen)


def under(path: bytes, prefixes: set[bytes]) -> bool:
    """Is ``path`` inside one of ``prefixes``?"""
    parts = path.split(b"/")[:-1]
    return any(b"/".join(parts[:i]) in prefixes for i in range(1, len(parts) + 1))


def checksum_command(root: str, check_bytes: int | None = None, *, files0: bool = False) -> str:
    """sha256 of regular files only: ``-type f`` keeps a symlink's target unread."""
    return wrap(enter(root) + checked(check_bytes, files0)
                + each_path("-maxdepth 0 -type f -exec sha256sum {} +", files0))


def tar_command(root: str, check_bytes: int | None = None, *, files0: bool = False) -> str:
    """One POSIX tar stream of the listed files: ns mtimes in pax headers, links never followed.

    ``--hard-dereference``: Cyrus hard-links one message into many mailboxes;
    each must arrive as a whole file, not as a link to a member we may skip.
    ``--no-unquote``: names with backslashes are taken literally. GNU format
    (one header per file instead of three) was tried and dropped: by hand it
    saved 3-8 % of a first copy's CPU, and in the bench it was no faster
    (BENCHMARKS.md, session 8).
    """
    return wrap(
        enter(root) + checked(check_bytes, files0)
        + "exec tar --null --no-recursion --no-unquote --hard-dereference --format=posix "
        "--pax-option=delete=atime,delete=ctime -cf - -T -"
    )


PS_COMMAND = wrap("ps -ww -eo args 2>/dev/null || ps -eo args")


def stdin_paths(paths: Iterable[bytes]) -> bytes:
    """NUL-separated ``./``-prefixed list for a command's stdin (``b""`` is the root ``.``)."""
    return b"".join((b"./" + p if p else b".") + b"\0" for p in paths)


def strip_dot(path: bytes) -> bytes:
    """``./a/b`` → ``a/b``; ``.`` → ``b""``."""
    if path == b".":
        return b""
    if path.startswith(b"./"):
        return path[2:]
    return path


def parse_time_ns(text: bytes) -> int:
    """``1700000000.123456789`` (any fraction length, optional sign) → integer nanoseconds, exactly."""
    neg = text.startswith(b"-")
    if neg:
        text = text[1:]
    whole, _, frac = text.partition(b".")
    ns = int(whole or b"0") * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    return -ns if neg else ns


def parse_records(chunks: Iterable[bytes], sections: bool = False) -> Iterator[Any]:
    """Turn the byte stream of :data:`FIND_FORMAT` records into Entries as they arrive.

    With ``sections``, a :data:`SECTION_END` record yields ``(index, status)``.
    A run of :data:`UNCHANGED_MARK` bytes (before a record, or at the end)
    yields its length, an ``int``.

    The loop is written out (no per-record helper calls): a walk of a big spool
    is 200k records, and GNU find's ``%T@`` (ten fraction digits) takes the
    fast path of the time conversion.
    """
    rest = b""
    fields: list[bytes] = []
    kinds = _KINDS
    new = tuple.__new__  # = Entry(...) without the Python-level __new__ call
    for chunk in chunks:
        parts = (rest + chunk).split(b"\0")
        rest = parts.pop()
        fields.extend(parts)
        n = len(fields) - len(fields) % FIELDS
        for i in range(0, n, FIELDS):
            kind = fields[i]
            path = fields[i + 6]
            path = path[2:] if path.startswith(b"./") else b"" if path == b"." else path
            if kind == SECTION_END and sections:
                yield int(fields[i + 2]), int(fields[i + 1])
                continue
            k = kinds.get(kind)
            if k is None:  # off the hot path: files, directories and links
                if kind[:1] == b"u":  # "unchanged" answers before this record (a stat since prints them)
                    stripped = kind.lstrip(b"u")
                    yield len(kind) - len(stripped)
                    if stripped == SECTION_END and sections:
                        yield int(fields[i + 2]), int(fields[i + 1])
                        continue
                    kind = stripped
                k = kinds.get(kind, "o")
            t = fields[i + 4]
            dot = t.find(b".")
            if dot > 0 and len(t) - dot > 9 and t[0] != 45:  # "-": before 1970, the exact slow path
                mtime_ns = int(t[:dot]) * 1_000_000_000 + int(t[dot + 1:dot + 10])
            else:
                mtime_ns = parse_time_ns(t)
            yield new(Entry, (path, k, int(fields[i + 2]), mtime_ns, int(fields[i + 1], 8) & 0o7777,
                              int(fields[i + 3]), fields[i + 5] if k == "l" else None))
        del fields[:n]
    if rest and not fields and not rest.strip(b"u"):
        yield len(rest)  # "unchanged" answers last
        rest = b""
    if rest or fields:
        raise ValueError("listing ended in the middle of a record")


def _entry(kind: bytes, mode: bytes, size: bytes, inode: bytes, mtime: bytes, link: bytes, path: bytes) -> Entry:
    k = _KINDS.get(kind, "o")
    return Entry(strip_dot(path), k, int(size), parse_time_ns(mtime), int(mode, 8) & 0o7777, int(inode),
                 link if k == "l" else None)


def parse_named(chunks: Iterable[bytes]) -> Iterator[Entry | Names]:
    """Turn a listing by name (:data:`NAMED_FORMAT`) into Entries and one :class:`Names` per directory.

    ``find`` lists a directory itself (depth 0) and then its entries, so the
    names after a directory's own record are its names, up to the next
    directory's: they are sliced off the split stream whole and yielded as
    one :class:`Names` when the next directory starts (or at the end), after
    that directory's other entries. A listed directory that is no longer one
    (a file or symlink now) lists nothing: its own record or name is dropped.
    """
    rest = b""
    fields: list[bytes] = []
    current: bytes | None = None  # the directory whose names come now
    names: list[bytes] = []
    for chunk in chunks:
        parts = (rest + chunk).split(b"\0")
        rest = parts.pop()
        fields.extend(parts)
        i, n = 0, len(fields)
        while i < n:
            if fields[i]:  # names, up to the next record
                try:
                    j = fields.index(b"", i)
                except ValueError:
                    j = n
                run = fields[i:j]
                while run and run[-1][:1] == b"0":  # a listed directory that is a plain file now
                    run.pop()
                if run:
                    if current is None or run[0][:1] != b"1":
                        raise ValueError(f"listing: a name out of place near {run[0][:200]!r}")
                    names.extend(run)
                i = j
                continue
            if i + 8 > n:  # a record not complete yet
                break
            depth_kind, mode, size, inode, mtime, link, path = fields[i + 1:i + 8]
            i += 8
            if depth_kind[:1] == b"0":  # a listed directory: its entries follow
                if names:
                    yield Names(current or b"", [name[1:] for name in names])
                    names = []
                current = strip_dot(path) if depth_kind == b"0d" else None
            else:
                yield _entry(depth_kind[1:], mode, size, inode, mtime, link, path)
        del fields[:i]
    if rest or fields:
        raise ValueError("listing ended in the middle of a record")
    if names:
        yield Names(current or b"", [name[1:] for name in names])


def parse_sha256_line(line: bytes) -> tuple[bytes, str]:
    """One ``sha256sum`` output line → (path, hex digest); undoes its ``\\`` escaping."""
    escaped = line.startswith(b"\\")
    if escaped:
        line = line[1:]
    digest, name = line[:64], line[66:]
    if len(digest) != 64 or line[64:66] not in (b"  ", b" *"):
        raise ValueError(f"unexpected sha256sum output {line[:100]!r}")
    if escaped:
        name = re.sub(rb"\\(.)", lambda m: {b"n": b"\n", b"r": b"\r", b"\\": b"\\"}.get(m.group(1), m.group(0)),
                      name)
    return strip_dot(name), digest.decode("ascii")


#: About how much of a command's stderr is kept to be judged (:func:`add_stderr`).
STDERR_KEEP = 1 << 16


def add_stderr(errbuf: bytearray, data: bytes) -> None:
    """Append stderr ``data`` to ``errbuf``, holding it near :data:`STDERR_KEEP` bytes and every line that matters.

    A pass that finds thousands of vanished paths reads a note of ~100 bytes
    for each. Past the limit, complete benign lines are dropped (what
    :func:`fatal_stderr` passes over anyway): a cut through a note would leave
    a fragment that reads as an error, and a real error after the limit would
    go unseen. The line still arriving is kept, to be judged once complete.
    """
    errbuf.extend(data)
    if len(errbuf) <= STDERR_KEEP:
        return
    end = errbuf.rfind(b"\n") + 1
    errbuf[:end] = b"".join(line for line in bytes(errbuf[:end]).splitlines(keepends=True) if _notable(line))
    del errbuf[STDERR_KEEP:]  # (only errors are left before the last line: the first ones stay)


def _notable(line: bytes) -> bool:
    """Is this stderr line more than a benign "vanished/changed" note (and not blank)?"""
    line = line.strip()
    return bool(line) and not _BENIGN.search(line)


def fatal_stderr(stderr: bytes) -> str | None:
    """The first stderr line that is not a benign "vanished/changed" note, if any."""
    for line in stderr.splitlines():
        if _notable(line):
            return line.strip().decode("utf-8", "backslashreplace")
    return None
