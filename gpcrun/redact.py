"""Redaction, for everything gpcrun writes or prints (receipts, run directories, batch results): secret flags'
values in argv, secret environment variables, literal secrets, hf_ tokens and credentials in URLs (user:password@,
?token=...) anywhere in a document, and (on request) the home directory and host name."""
from __future__ import annotations

import os
import re
import socket
from typing import Any, Iterable, Mapping, Sequence

from .server_args import ServerArgs, settings

REDACTED = "<redacted>"
_SECRET_FLAGS = settings.secret_flags()  # --api-key, --api-key-file, --ssl-key-file, -hft/--hf-token
_SECRET_ENV = re.compile(r"((^|_)(TOKEN|KEY|SECRET|KEY_FILE|CREDENTIALS)|PASSWORD|PASSWD)$", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")
# scheme://user:password@host -> scheme://user:<redacted>@host
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):([^/\s@]+)@")
# ?token=... &api_key=... &password=... in a URL's query
_URL_QUERY_SECRET = re.compile(r"(?i)([?&](?:[a-z0-9_-]*(?:token|key|secret|password|passwd|signature|sig)"
                               r"[a-z0-9_-]*)=)(?!<redacted>)[^&#\s'\"]+")
# Secret values shorter than this are only redacted where they are known to be (argv, env), not searched for in
# every string of the receipt: replacing a 3-character key everywhere would corrupt numbers and names.
_MIN_SCRUB_LEN = 6
# a secret flag and its value quoted inside free text (an outcome reason: "rejected an argument: --api-key=k")
_FLAG_IN_TEXT = re.compile(r"(?<![\w-])(" + "|".join(re.escape(f) for f in sorted(_SECRET_FLAGS, key=len, reverse=True))
                           + r")(=|\s+)(['\"]?)(?!<redacted>)[^\s'\",;)]+")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """An argv with the values of secret options hidden (read by the one llama-server argument model), a secret
    flag written '--api-key=k' (not llama-server syntax, but still a secret) hidden too, and hf_ tokens anywhere."""
    out: list[str] = []
    for a in ServerArgs.parse(list(argv), strict=False).items:
        if a.option is not None and a.option.key in settings.SECRET_KEYS:
            out += [a.token, *[REDACTED for _ in a.values]]
            continue
        for t in a.tokens():
            name = t.split("=", 1)[0]
            out.append(f"{name}={REDACTED}" if "=" in t and name in _SECRET_FLAGS else _plain_secrets(t))
    return out


def _plain_secrets(x: str) -> str:
    """Secrets recognisable without knowing them: hf_ tokens and credentials in URLs."""
    x = _HF_TOKEN.sub(REDACTED, x)
    if "://" in x:
        x = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", x)
    if "=" in x:
        x = _URL_QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, x)
    return x


def secret_values(argv: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """The literal secrets in an argv (values of secret options) and an environment (*_TOKEN, *_KEY... values)."""
    sa = ServerArgs.parse(list(argv), strict=False)
    out = settings.secret_values(sa)
    out.update(t.split("=", 1)[1] for t in sa.unknown() if "=" in t and t.split("=", 1)[0] in _SECRET_FLAGS
               and t.split("=", 1)[1])
    out.update(v for k, v in env.items() if v and _SECRET_ENV.search(k))
    return out


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Only the variables that shape a run are kept; any *_TOKEN/*_KEY value is redacted."""
    keep = {}
    for k, v in env.items():
        if k.startswith(("LLAMA_", "GGML_", "CUDA_", "GPCRUN_", "HF_", "OMP_")) or _SECRET_ENV.search(k):
            keep[k] = REDACTED if _SECRET_ENV.search(k) or _HF_TOKEN.search(v) else _plain_secrets(v)
    return dict(sorted(keep.items()))


def scrub(doc: Any, secrets_: Iterable[str] = ()) -> Any:
    """Every string list that carries a secret flag is redacted like an argv (the plan's argv, a run's argv);
    hf_ tokens and the given literal secrets (long enough to search for) are replaced in every string."""
    lits = sorted({s for s in secrets_ if len(s) >= _MIN_SCRUB_LEN}, key=len, reverse=True)

    def fix_str(x: str) -> str:
        for s in lits:
            if s in x:
                x = x.replace(s, REDACTED)
        if "-" in x:
            x = _FLAG_IN_TEXT.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED, x)
        return _plain_secrets(x)

    def fix(x):
        if isinstance(x, str):
            return fix_str(x)
        if isinstance(x, list):
            if any(isinstance(v, str) and v.split("=", 1)[0] in _SECRET_FLAGS for v in x):
                x = redact_argv([v if isinstance(v, str) else str(v) for v in x]) \
                    if all(isinstance(v, str) for v in x) else x
            return [fix(v) for v in x]
        if isinstance(x, dict):
            return {fix(k) if isinstance(k, str) else k: fix(v) for k, v in x.items()}
        return x
    return fix(doc)


def _token_re(word: str) -> re.Pattern:
    # whole names only: the host "vm" must not turn "llvm" into "ll<host>", home "/home/a" must spare "/home/ab"
    return re.compile(r"(?<![A-Za-z0-9_.-])" + re.escape(word) + r"(?![A-Za-z0-9_-])")


def redact_paths(doc: Any, home: str | None = None, hostname: str | None = None) -> Any:
    """Replace the home directory with ~ and the host name with <host> everywhere in a JSON document."""
    home = (home or os.path.expanduser("~")).rstrip("/")
    hostname = hostname or socket.gethostname()
    home_re = re.compile(re.escape(home) + r"(?=/|$|[^A-Za-z0-9_.-])") if home and home != "/" else None
    names = {hostname, hostname.split(".")[0]} if hostname else set()
    host_res = [_token_re(n) for n in sorted(names, key=len, reverse=True) if len(n) >= 2]

    def fix(x):
        if isinstance(x, str):
            if home_re is not None:
                x = home_re.sub("~", x)
            for rx in host_res:
                x = rx.sub("<host>", x)
            return x
        if isinstance(x, list):
            return [fix(v) for v in x]
        if isinstance(x, dict):
            return {fix(k): fix(v) for k, v in x.items()}
        return x
    return fix(doc)
