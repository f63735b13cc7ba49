"""Hiding secrets in text meant for people: messages, the log, --print-config.

Rules: token, password and key never appear in --help, --print-config, the log or an error
message: they show as "***", and so does the password in a URL's `user:password@`.
"""

from __future__ import annotations

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
_MIN_LITERAL = 4     # shorter secrets are not masked by value: they would mangle every message


def mask(text: str, cfg=None) -> str:
    """Hide secrets in any message: `user:pass@` in URLs, `token=...`-style values, and the
    literal token, password and key of cfg when given."""
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
    for pattern in _SECRET_KV:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{MASK}", text)
    if cfg is not None:
        secrets = [cfg.token, cfg.password]
        if cfg.key:
            secrets.append(cfg.key.decode("utf-8", "replace"))
        for secret in sorted((s for s in secrets if s and len(s) >= _MIN_LITERAL),
                             key=len, reverse=True):
            text = text.replace(secret, MASK)
    return text
