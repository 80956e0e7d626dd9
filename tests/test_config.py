"""The configuration contract (DESIGN.md): fixed keys, clear errors naming file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spoolmig import config
from spoolmig.cli import main
from spoolmig.errors import ConfigError

CONTRACT = '''
[source]
url = "ssh://root@oldhost:2222"
known_hosts = "~/.ssh/known_hosts"
identity_file = "~/.ssh/id_ed25519"
version = "auto"
configdirectory = "/var/lib/imap"
sievedir = "/var/lib/imap/sieve"
partitions = { default = "/var/spool/imap", p2 = "/data/imap2/" }
hashimapspool = true
fulldirhash = false
virtdomains = false
unixhierarchysep = false

[mirror]
path = "/srv/spoolmig/mirror"
delete = true

[target]
version = "3.6"
root = "/"
configdirectory = "/var/lib/cyrus"
sievedir = "/var/lib/cyrus/sieve"
partitions = { default = "/var/spool/cyrus/mail" }
hashimapspool = true
fulldirhash = false
virtdomains = true
unixhierarchysep = true

[rewrite]
partitions = { default = "default" }
acl = "rfc4314"
deleteright = "c"
domain = "example.com"
users = { bobj = "bob@example.com", bobw = "bob@other.com" }
[[rewrite.rename]]
pattern = '^(.*)\\.Sent Items$'
replace = '\\1.Sent'
'''


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "migration.toml"
    path.write_text(text)
    return str(path)


def test_every_contract_key_is_read(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, CONTRACT))
    assert cfg.source.url == config.SourceURL("ssh", user="root", host="oldhost", port=2222)
    assert cfg.source.identity_file == "~/.ssh/id_ed25519"
    assert cfg.source.layout.partitions == {"default": "/var/spool/imap", "p2": "/data/imap2"}
    assert cfg.source.layout.hashimapspool is True and cfg.source.layout.virtdomains is False
    assert cfg.mirror.path == "/srv/spoolmig/mirror" and cfg.mirror.delete is True
    assert cfg.target.layout.version == "3.6" and cfg.target.layout.unixhierarchysep is True
    assert cfg.rewrite.users["bobw"] == "bob@other.com"
    rule = cfg.rewrite.rename[0]
    assert rule.pattern.sub(rule.replace, "user.bob.Sent Items") == "user.bob.Sent"


def test_local_url_is_a_root_folder(tmp_path: Path) -> None:
    text = CONTRACT.replace('"ssh://root@oldhost:2222"', '"old"')
    cfg = config.load(write(tmp_path, text))
    assert cfg.source.url.scheme == "local"
    assert cfg.source.url.path == os.path.join(str(tmp_path), "old")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("hashimapspool = true", "hashimapspool = 1"), "[source] hashimapspool: expected bool"),
        (("delete = true", "delete = true\ncolour = 1"), "[mirror] has unknown key 'colour'"),
        (('acl = "rfc4314"', 'acl = "rfc2086"'), "[rewrite] acl: must be 'rfc4314' or 'keep'"),
        (('url = "ssh://root@oldhost:2222"', 'url = "ftp://x"'), "[source] url: unsupported scheme"),
        (('url = "ssh://root@oldhost:2222"', 'url = "ssh://root@oldhost:22/var"'), "names a host, not a path"),
        (('configdirectory = "/var/lib/imap"', 'configdirectory = "var/lib/imap"'), "must be an absolute path"),
        (("pattern = '^(.*)\\.Sent Items$'", "pattern = '(('"), "rename[0]: bad pattern"),
        (('version = "3.6"', 'version = "9.9"'), "[target] version: unknown Cyrus version"),
        (('path = "/srv/spoolmig/mirror"', ""), "[mirror] path: missing"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in CONTRACT
    path = write(tmp_path, CONTRACT.replace(old, new, 1))
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert str(exc.value).startswith(path + ": ")
    assert message in str(exc.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[source\n"))


def test_cli_reports_config_error_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[source]\nurl = 3\n")
    code = main(["status", "--config", path])
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code
    assert len(err.strip().splitlines()) == 1
    assert path in err and "Traceback" not in err
