"""The migration configuration (TOML): load, validate, and the ``init`` template.

The keys are a contract (DESIGN.md): tests outside the project write these
files. Unknown keys are refused so a typo never silently falls back to a
default. Every error names the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from spoolmig.errors import ConfigError

#: Cyrus versions spoolmig knows, oldest first.
KNOWN_VERSIONS = ("2.2", "2.3", "2.4", "2.5", "3.0", "3.2", "3.4", "3.6", "3.8", "3.10", "3.12")


@dataclass(frozen=True)
class SourceURL:
    """Where the old server is: a local root folder or ``ssh://user@host:port``."""

    scheme: str  # "local" or "ssh"
    path: str = ""  # local root folder standing for the old server's "/"
    user: str | None = None
    host: str = ""
    port: int = 22

    def __str__(self) -> str:
        if self.scheme == "local":
            return self.path
        user = f"{self.user}@" if self.user else ""
        return f"ssh://{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerLayout:
    """How one Cyrus server lays out its files (source or target side)."""

    version: str
    configdirectory: str
    sievedir: str
    partitions: dict[str, str]
    hashimapspool: bool
    fulldirhash: bool
    virtdomains: bool
    unixhierarchysep: bool


@dataclass(frozen=True)
class SourceConfig:
    url: SourceURL
    layout: ServerLayout
    known_hosts: str = "~/.ssh/known_hosts"
    identity_file: str | None = None
    #: "SHA256:..." fingerprint accepted instead of a known_hosts entry.
    host_key_fingerprint: str | None = None


@dataclass(frozen=True)
class MirrorConfig:
    path: str
    delete: bool = True
    #: configdirectory entries copied (relative paths or globs); None = the defaults.
    config_include: tuple[str, ...] | None = None
    config_exclude: tuple[str, ...] = ()
    #: "user:group" the replica's files are given (root only); None keeps ours.
    owner: str | None = None
    jobs: int = 1


@dataclass(frozen=True)
class TargetConfig:
    layout: ServerLayout
    root: str = "/"


@dataclass(frozen=True)
class RenameRule:
    pattern: re.Pattern[str]
    replace: str


@dataclass(frozen=True)
class RewriteConfig:
    partitions: dict[str, str] = field(default_factory=dict)
    acl: str = "rfc4314"
    deleteright: str = "c"
    domain: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    rename: tuple[RenameRule, ...] = ()


@dataclass(frozen=True)
class Config:
    file: str
    source: SourceConfig
    mirror: MirrorConfig
    target: TargetConfig
    rewrite: RewriteConfig


_SERVER_KEYS = {
    "version", "configdirectory", "sievedir", "partitions",
    "hashimapspool", "fulldirhash", "virtdomains", "unixhierarchysep",
}
_SECTIONS = {
    "source": _SERVER_KEYS | {"url", "known_hosts", "identity_file", "host_key_fingerprint"},
    "mirror": {"path", "delete", "config_include", "config_exclude", "owner", "jobs"},
    "target": _SERVER_KEYS | {"root"},
    "rewrite": {"partitions", "acl", "deleteright", "domain", "users", "rename"},
}
_SOURCE_DEFAULTS = {
    "version": "auto", "configdirectory": "/var/lib/imap", "sievedir": "/var/lib/imap/sieve",
    "partitions": {"default": "/var/spool/imap"}, "hashimapspool": False, "fulldirhash": False,
    "virtdomains": False, "unixhierarchysep": False,
}
_TARGET_DEFAULTS = {
    "version": "3.6", "configdirectory": "/var/lib/cyrus", "sievedir": "/var/lib/cyrus/sieve",
    "partitions": {"default": "/var/spool/cyrus/mail"}, "hashimapspool": True, "fulldirhash": False,
    "virtdomains": True, "unixhierarchysep": True,
}


class _Reader:
    """Typed access to one table, with errors that name the file and the key."""

    def __init__(self, file: str, section: str, table: dict[str, Any]) -> None:
        self.file, self.section, self.table = file, section, table
        unknown = sorted(set(table) - _SECTIONS[section])
        if unknown:
            raise ConfigError(f"{file}: [{section}] has unknown key {unknown[0]!r}",
                              hint=f"known keys: {', '.join(sorted(_SECTIONS[section]))}")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: [{self.section}] {key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.table.get(key, default)
        if value is not None and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.error(key, f"expected {names}, got {type(value).__name__}")
        return value

    def string_map(self, key: str, default: dict[str, str]) -> dict[str, str]:
        value = self.get(key, dict, default)
        for k, v in value.items():
            if not isinstance(v, str) or not v:
                raise self.error(key, f"value for {k!r} must be a non-empty string")
        return dict(value)

    def absolute(self, key: str, default: str) -> str:
        value = self.get(key, str, default)
        if not value.startswith("/"):
            raise self.error(key, f"must be an absolute path, got {value!r}")
        return value.rstrip("/") or "/"


def parse_source_url(file: str, url: str) -> SourceURL:
    """``ssh://[user@]host[:port]`` or a local folder (absolute, or ~)."""
    if url.startswith("ssh://"):
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(f"{file}: [source] url: no host in {url!r}")
        if parts.path not in ("", "/"):
            raise ConfigError(f"{file}: [source] url: an ssh url names a host, not a path: {url!r}",
                              hint="paths come from configdirectory, sievedir and partitions")
        try:
            port = parts.port or 22
        except ValueError:
            raise ConfigError(f"{file}: [source] url: bad port in {url!r}") from None
        user = unquote(parts.username) if parts.username else None
        return SourceURL("ssh", user=user, host=parts.hostname, port=port)
    if "://" in url:
        raise ConfigError(f"{file}: [source] url: unsupported scheme in {url!r}",
                          hint="use ssh://user@host:port or a local folder")
    path = os.path.expanduser(url)
    if not os.path.isabs(path):
        path = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(file)), path))
    return SourceURL("local", path=os.path.normpath(path))


def _layout(reader: _Reader, defaults: dict[str, Any], *, allow_auto: bool) -> ServerLayout:
    version = reader.get("version", str, defaults["version"])
    if not (version in KNOWN_VERSIONS or (allow_auto and version == "auto")
            or re.fullmatch(r"[23]\.\d+(\.\d+)?", version)):
        raise reader.error("version", f"unknown Cyrus version {version!r}")
    partitions = reader.string_map("partitions", defaults["partitions"])
    if not partitions:
        raise reader.error("partitions", "at least one partition is needed")
    for name, path in partitions.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise reader.error("partitions", f"bad partition name {name!r}")
        if not path.startswith("/"):
            raise reader.error("partitions", f"{name}: must be an absolute path, got {path!r}")
    return ServerLayout(
        version=version,
        configdirectory=reader.absolute("configdirectory", defaults["configdirectory"]),
        sievedir=reader.absolute("sievedir", defaults["sievedir"]),
        partitions={k: v.rstrip("/") or "/" for k, v in partitions.items()},
        hashimapspool=reader.get("hashimapspool", bool, defaults["hashimapspool"]),
        fulldirhash=reader.get("fulldirhash", bool, defaults["fulldirhash"]),
        virtdomains=reader.get("virtdomains", bool, defaults["virtdomains"]),
        unixhierarchysep=reader.get("unixhierarchysep", bool, defaults["unixhierarchysep"]),
    )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such configuration file",
                          hint="create one with: spoolmig init > migration.toml") from None
    except OSError as error:
        raise ConfigError(f"{file}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file}: not valid TOML: {error}") from None
    return from_dict(data, file=file)


def from_dict(data: dict[str, Any], *, file: str = "<config>") -> Config:
    """Validate an already parsed TOML document."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{file}: unknown section [{unknown[0]}]")
    for section in _SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{file}: [{section}] must be a table")
    src = _Reader(file, "source", data.get("source", {}))
    url = src.get("url", str, None)
    if not url:
        raise src.error("url", "missing (ssh://user@host:port, or a local folder)")
    source = SourceConfig(
        url=parse_source_url(file, url),
        layout=_layout(src, _SOURCE_DEFAULTS, allow_auto=True),
        known_hosts=src.get("known_hosts", str, "~/.ssh/known_hosts"),
        identity_file=src.get("identity_file", str, None),
        host_key_fingerprint=src.get("host_key_fingerprint", str, None),
    )
    mir = _Reader(file, "mirror", data.get("mirror", {}))
    mirror_path = mir.get("path", str, None)
    if not mirror_path:
        raise mir.error("path", "missing: where the replica lives")
    jobs = mir.get("jobs", int, 1)
    if jobs < 1:
        raise mir.error("jobs", "must be at least 1")
    include = mir.get("config_include", list, None)
    exclude = mir.get("config_exclude", list, [])
    for key, value in (("config_include", include or []), ("config_exclude", exclude)):
        if not all(isinstance(v, str) and v for v in value):
            raise mir.error(key, "must be a list of non-empty strings")
    mirror = MirrorConfig(
        path=os.path.abspath(os.path.expanduser(mirror_path)),
        delete=mir.get("delete", bool, True),
        config_include=tuple(include) if include is not None else None,
        config_exclude=tuple(exclude),
        owner=mir.get("owner", str, None),
        jobs=jobs,
    )
    tgt = _Reader(file, "target", data.get("target", {}))
    target = TargetConfig(
        layout=_layout(tgt, _TARGET_DEFAULTS, allow_auto=False),
        root=os.path.abspath(os.path.expanduser(tgt.get("root", str, "/"))),
    )
    rw = _Reader(file, "rewrite", data.get("rewrite", {}))
    acl = rw.get("acl", str, "rfc4314")
    if acl not in ("rfc4314", "keep"):
        raise rw.error("acl", f"must be 'rfc4314' or 'keep', got {acl!r}")
    deleteright = rw.get("deleteright", str, "c")
    if len(deleteright) != 1:
        raise rw.error("deleteright", f"must be one rights letter, got {deleteright!r}")
    rules = []
    for i, rule in enumerate(rw.get("rename", list, [])):
        if not isinstance(rule, dict) or set(rule) != {"pattern", "replace"}:
            raise rw.error(f"rename[{i}]", "needs exactly the keys pattern and replace")
        try:
            rules.append(RenameRule(re.compile(rule["pattern"]), str(rule["replace"])))
        except re.error as error:
            raise rw.error(f"rename[{i}]", f"bad pattern: {error}") from None
    rewrite = RewriteConfig(
        partitions=rw.string_map("partitions", {}),
        acl=acl,
        deleteright=deleteright,
        domain=rw.get("domain", str, None),
        users=rw.string_map("users", {}),
        rename=tuple(rules),
    )
    return Config(file=file, source=source, mirror=mirror, target=target, rewrite=rewrite)


def template() -> str:
    """The commented configuration ``spoolmig init`` prints."""
    return (Path(__file__).with_name("migration.toml.template")).read_text(encoding="utf-8")
