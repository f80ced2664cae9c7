"""What an IAM role's own policy documents allow: enough of AWS's evaluation (explicit deny wins, wildcards, the
string conditions s2v's policies use) to tell whether a role can do what a run needs, offline.

It reads identity policies only: service control policies, permissions boundaries and bucket policies are not
seen, so "allow" here means "the role's policies allow it", and anything it cannot evaluate never counts as allow."""

from __future__ import annotations

import fnmatch
from typing import Iterable

# Condition operators evaluated here; a statement with any other one is never taken as granting anything.
_STRING_OPS = {"StringEquals": False, "StringLike": True}


def _listed(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _match(pattern: str, value: str, case: bool) -> bool:
    pattern = pattern.replace("[", "[[]")  # IAM has only * and ?; fnmatch's [...] must stay literal
    return fnmatch.fnmatchcase(value, pattern) if case else fnmatch.fnmatchcase(value.lower(), pattern.lower())


def _condition_holds(cond: dict, context: dict[str, str]) -> bool | None:
    """True/False when every operator and key is known here, None otherwise."""
    for op, pairs in (cond or {}).items():
        if op not in _STRING_OPS or not isinstance(pairs, dict):
            return None
        for key, wanted in pairs.items():
            got = context.get(key)
            if got is None:
                return None
            like = _STRING_OPS[op]
            if not any(_match(w, got, True) if like else w == got for w in _listed(wanted)):
                return False
    return True


def _applies(st: dict, action: str, resource: str, context: dict[str, str]) -> bool | None:
    if "NotAction" in st or "NotResource" in st or "NotPrincipal" in st:
        return None
    if not any(_match(a, action, case=False) for a in _listed(st.get("Action"))):
        return False
    if not any(_match(r, resource, case=True) for r in _listed(st.get("Resource"))):
        return False
    return _condition_holds(st.get("Condition") or {}, context) if st.get("Condition") else True


def decide(docs: Iterable[dict], action: str, resource: str, context: dict[str, str] | None = None) -> str:
    """'deny' (an explicit Deny applies), 'allow' (an Allow applies and no Deny), else 'implicit-deny'."""
    allowed = False
    for doc in docs:
        statements = doc.get("Statement")
        for st in [statements] if isinstance(statements, dict) else list(statements or []):
            hit = _applies(st, action, resource, context or {})
            if st.get("Effect") == "Deny" and hit:
                return "deny"
            if st.get("Effect") == "Allow" and hit:
                allowed = True
    return "allow" if allowed else "implicit-deny"
