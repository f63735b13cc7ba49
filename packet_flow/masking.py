"""Hiding secrets in text meant for people: messages, the log, --print-config.

Rules:
- Secrets are masked by field, never by searching for their text: the token, password and key
  options (and what their *-file options read) show as "***" wherever packet-flow shows an
  option's value, and an InfluxDB URL shows as `scheme://user:***@host`. A secret that happens to
  equal other text ("8000") leaves that text alone.
- Text packet-flow did not write (a server's error, an OSError) goes through mask(): a URL's
  `user:password@`, and the value after a secret-looking name (`token=...`, `password: ...`,
  `Authorization: Token ...`) become "***".
- Command-line words argparse could not place: the word after a secret-looking flag
  (`--passwrd hunter2`) or after its `=` is masked.
"""

from __future__ import annotations

import difflib
import re

MASK = "***"

_URL_CREDS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
_NAMES = r"(token|password|passwd|secret|key|authorization)"
_VALUE = r"((?:token|basic|bearer)\s+)?([^\s\"',;&]+)"
# `name=value` anywhere (also `--token=x`); `name: value` but not `--name: ...` (our messages)
_SECRET_KV = (
    re.compile(r"(?i)(?<![a-z0-9])" + _NAMES + r"([\"']?\s*=\s*[\"']?)" + _VALUE),
    re.compile(r"(?i)(?<![a-z0-9-])" + _NAMES + r"([\"']?\s*:\s*[\"']?)" + _VALUE),
)
# flag names that look like a secret's, misspelt ones included (--passwrd, --tokn, --api-key)
_SECRET_PARTS = ("token", "tok", "pass", "pwd", "secret", "key", "auth", "cred")
_SECRET_WORDS = ("token", "password", "passwd", "secret", "key")
_SECRET_SHORT = ("-t", "-p", "-T", "-P")
_LONG_FLAG = re.compile(r"--[A-Za-z][\w-]*(=.*)?\Z", re.S)


def mask(text: str) -> str:
    """Hide secrets in text packet-flow did not write: `user:pass@` in URLs and the values of
    `token=...`-style fields."""
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    for pattern in _SECRET_KV:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)
    return text


def mask_url(url: str) -> str:
    """The URL with the password of its `user:password@` replaced by "***"."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:{MASK}@{hostport}{slash}{path}"


def secret_flag(word: str) -> bool:
    """True when a command-line word is a flag whose name looks like a secret's."""
    if word in _SECRET_SHORT:
        return True
    if not word.startswith("--"):
        return False
    name = word[2:].partition("=")[0].lower()
    parts = name.replace("_", "-").split("-")
    return (any(p in name for p in _SECRET_PARTS)
            or any(difflib.get_close_matches(p, _SECRET_WORDS, n=1, cutoff=0.7) for p in parts))


def mask_args(words: list[str]) -> list[str]:
    """Command-line words with the value of every secret-looking flag masked: the part after
    `=`, else the next word unless that is a long flag itself."""
    out: list[str] = []
    hide_next = False
    for word in words:
        if hide_next and not _LONG_FLAG.match(word):
            out.append(MASK)
            hide_next = False
            continue
        hide_next = False
        if secret_flag(word):
            flag, eq, _ = word.partition("=")
            out.append(f"{flag}={MASK}" if eq else word)
            hide_next = not eq
        else:
            out.append(word)
    return out
