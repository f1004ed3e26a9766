"""API keys: one parser for every source, and the check of a request's bearer key.

A key spec is ``KEY`` (an operator: RAG may retrieve every document) or
``KEY:USER[:GROUP,GROUP[:TENANT]]`` (RAG only retrieves what that user may read). Commas
belong to the group list, so specs are never separated by commas: ``--api-key`` takes one spec
per flag, ``LMFORGE_API_KEYS`` separates specs by whitespace or newlines, and a key file holds
one spec per line (a line whose first non-space character is ``#`` is a comment; a key may
not contain ``#``), which keeps keys out of ``ps``. Anything malformed
is a ``ValueError`` naming the entry and where it came from; a server never starts with a key
list it misread.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.rag import Access

ENV_VAR = "LMFORGE_API_KEYS"
SCHEME = "bearer "  # RFC 7235: the scheme is case-insensitive


@dataclass(frozen=True)
class Principal:
    """Who an API key speaks for: RAG only retrieves documents this user may read."""

    user: str
    groups: tuple[str, ...] = ()
    tenant: str | None = None


def access(principal: Principal | None, where: Mapping[str, str] | None = None) -> Access:
    """What a caller may retrieve: an operator key (``None``) or no keys at all, every document."""
    where = dict(where or {})
    if principal is None:
        return Access(where=where)
    return Access(user=principal.user, groups=list(principal.groups), tenant=principal.tenant,
                  where=where)


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, each bound to its principal (``None``: an operator). Empty: no key
    is required."""

    keys: Mapping[str, Principal | None] = field(default_factory=dict)
    # where each key was configured ("--api-key #1", "keys.txt:3"): how logs name a key
    sources: Mapping[str, str] = field(default_factory=dict)
    # keys are compared as HMAC-SHA256 digests under a per-process random salt: equal lengths,
    # so the comparison's time tells nothing about a key's length either
    _salt: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False,
                         compare=False)
    _digests: tuple[tuple[bytes, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_digests", tuple((self._digest(key), key)
                                                   for key in self.keys))

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._salt, key.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def match(self, authorization: str | None) -> str | None:
        """The key an ``Authorization: Bearer KEY`` header carries, if it is one of ours: the
        scheme (any case), one space, then the key exactly (trailing whitespace is dropped;
        ``Bearer  KEY`` with two spaces is no match). Every key is compared, in constant
        time, so timing tells nothing about near misses."""
        header = (authorization or "").rstrip()
        if header[:len(SCHEME)].lower() != SCHEME:
            return None
        offered = self._digest(header[len(SCHEME):])
        found = None
        for digest, key in self._digests:
            if hmac.compare_digest(offered, digest):
                found = key
        return found


def parse_spec(spec: str, where: str = "key spec") -> tuple[str, Principal | None]:
    """``KEY`` or ``KEY:USER[:GROUP,GROUP[:TENANT]]``; ``where`` names the source in errors."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"{where}: bad API key spec {masked(spec)!r}: {reason} (expected KEY "
                          "or KEY:USER[:GROUP,GROUP[:TENANT]])")

    if not spec or spec != spec.strip() or any(c.isspace() for c in spec):
        raise bad("empty or contains whitespace")
    parts = spec.split(":")
    if len(parts) > 4:
        raise bad("more than four ':'-separated fields")
    key, *rest = parts
    if not key:
        raise bad("the key is empty")
    if "#" in key:
        raise bad("a key may not contain '#' (it starts a comment in a key file)")
    if "," in key:
        raise bad("a key may not contain ',' (separate specs by whitespace or newlines; "
                  "commas separate groups)")
    if not rest:
        return key, None
    user = rest[0]
    if not user or "," in user:
        raise bad("the user must be one non-empty name")
    groups: tuple[str, ...] = ()
    if len(rest) > 1 and rest[1]:
        groups = tuple(rest[1].split(","))
        if not all(groups):
            raise bad("an empty group name")
    tenant = None
    if len(rest) > 2:
        tenant = rest[2]
        if not tenant or "," in tenant:
            raise bad("the tenant must be one non-empty name")
    return key, Principal(user, groups, tenant)


def masked(spec: str) -> str:
    """A spec fit for an error message or a log: the key's first four characters only."""
    key, colon, rest = spec.partition(":")
    return f"{key[:4]}…{colon}{rest}" if len(key) > 4 else spec


def load_api_keys(specs: Sequence[str] | None = (), key_file: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> ApiKeys:
    """Every key from ``--api-key`` specs, a key file and ``LMFORGE_API_KEYS`` (all of them,
    together; ``specs`` may be argparse's ``None``). The same key bound to two different
    principals is an error."""
    entries = [(spec, f"--api-key #{i}") for i, spec in enumerate(specs or (), 1)]
    if key_file is not None:
        for number, line in enumerate(Path(key_file).read_text("utf-8").splitlines(), 1):
            spec = line.strip()  # a '#' inside a spec is an error, never a cut
            if spec and not spec.startswith("#"):
                entries.append((spec, f"{key_file}:{number}"))
    env = (environ or {}).get(ENV_VAR, "")
    entries += [(spec, f"{ENV_VAR} #{i}") for i, spec in enumerate(env.split(), 1)]
    keys: dict[str, Principal | None] = {}
    sources: dict[str, str] = {}
    for spec, where in entries:
        key, principal = parse_spec(spec, where)
        if key in keys and keys[key] != principal:
            raise ValueError(f"{where}: API key {key[:4]}… is given twice with different users")
        keys[key] = principal
        sources.setdefault(key, where)
    return ApiKeys(keys, sources)
