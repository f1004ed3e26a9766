"""Who may read a document, decided from the index's own manifest at query time.

A document's ``tenant`` and ``acl`` (comma-separated principals; ``*``: every user of its
tenant) metadata say who may read it. A document with no principals (the field missing, empty,
or misspelled) falls to ``rag.default_access``: ``private`` (the default) lets only operators
read it, ``tenant`` every user of its tenant, ``public`` every user of every tenant. Operators
(``Access`` without a user: an operator key, the CLI, evaluation) read everything. A user's key
without a tenant reads only documents without a tenant. Access metadata never leaves the index:
``public_meta`` is what a reader is shown, and a filter (``where``, or ``exclude``: documents
hidden from one query, as the evaluation hides a question's own contract) may not name it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PUBLIC = "*"
ACCESS_FIELDS = ("acl", "tenant")
# metadata keys that look like a mistyped ``acl``: reported at indexing, never honoured
ACL_LOOKALIKES = frozenset({"acls", "access", "allow", "allowed", "readers", "alc", "permissions"})


@dataclass
class Access:
    """Who is asking and what they restrict the search to."""

    user: str | None = None  # None: an operator (or evaluation): every document
    groups: list[str] = field(default_factory=list)
    tenant: str | None = None  # a user without one reads only documents without a tenant
    where: dict[str, str] = field(default_factory=dict)  # document metadata that must match
    # documents whose metadata matches all of these are hidden, as if not in the index
    exclude: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_where(self.where)
        check_where(self.exclude)

    @property
    def filtered(self) -> bool:
        """Whether this query sees less than every document its reader may read."""
        return bool(self.where or self.exclude)

    def selects(self, meta: Mapping[str, str]) -> bool:
        """Whether a document with ``meta`` passes this query's filters (not who may read it)."""
        return matches(meta, self.where) and not (self.exclude and matches(meta, self.exclude))

    @property
    def operator(self) -> bool:
        return self.user is None

    @property
    def principals(self) -> list[str] | None:
        return None if self.user is None else [self.user, *self.groups, PUBLIC]

    @property
    def home(self) -> str:
        """The tenant whose documents this user's keyword statistics are computed over."""
        return self.tenant or ""


def acl_of(meta: Mapping[str, str]) -> list[str]:
    """The principals a document names; empty when it names none."""
    return [p.strip() for p in str(meta.get("acl", "")).split(",") if p.strip()]


def open_to_all(acl: list[str], policy: str) -> bool:
    """Readable across tenants: only a document without principals under ``public``."""
    return not acl and policy == "public"


def may_read(access: Access, tenant: str, acl: list[str], policy: str) -> bool:
    """Whether ``access`` may read a document of ``tenant`` with principals ``acl``."""
    if access.operator:
        return True
    if not acl:
        if policy != "tenant":
            return policy == "public"
        acl = [PUBLIC]
    if tenant != access.home:
        return False
    return bool(set(acl) & set(access.principals or ()))


def is_access_field(key: str) -> bool:
    """Metadata that says who may read a document (or looks like it): never shown, never
    filtered on."""
    return key.lower() in ACCESS_FIELDS or key.lower() in ACL_LOOKALIKES


def check_where(where: Mapping[str, str]) -> None:
    """A filter on access metadata would let a reader probe, by answer or no answer, which
    readable documents carry a value: refused."""
    for key in where:
        if is_access_field(str(key)):
            raise ValueError(f"filter field {key!r} is not allowed (access metadata)")


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """``FIELD=VALUE`` items (the CLI's ``--where``) as a filter."""
    where: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--where {item!r}: expected FIELD=VALUE")
        where[key.strip()] = value
    check_where(where)
    return where


def matches(meta: Mapping[str, str], where: Mapping[str, str]) -> bool:
    check_where(where)
    return all(meta.get(k) == v for k, v in where.items())


def public_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """A document's metadata as a reader may see it: without who may read it."""
    return {k: v for k, v in meta.items() if not is_access_field(k)}


def acl_problems(doc_id: str, meta: Mapping[str, str], policy: str) -> list[str]:
    """Warnings for access metadata that will not do what its author meant."""
    problems = []
    for key in meta:
        if key != "acl" and (key.lower() in ACL_LOOKALIKES or key.lower() == "acl"):
            problems.append(f"{doc_id}: metadata '{key}' is not 'acl'; ignored, the document "
                            f"is {policy} (rag.default_access)")
    if "acl" in meta and not acl_of(meta):
        problems.append(f"{doc_id}: empty acl; the document is {policy} (rag.default_access)")
    return problems
