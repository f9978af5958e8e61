"""Who may read and write which topics: load, validate, evaluate, explain. Pure, no I/O."""

from authserver.policy.engine import (
    DEFAULT_RESOURCE_LIMIT,
    allowed_client_ids,
    check_client_id,
    check_limits,
    evaluate,
    explain,
    restrict,
    token_plan,
)
from authserver.policy.loader import load_policy, parse_policy
from authserver.policy.model import (
    ClientIdNotAllowed,
    Decision,
    Policy,
    PolicyLoadError,
    Refusal,
    Rule,
    RuleMatch,
    TokenRequest,
    TopicNotGranted,
)

__all__ = [
    "DEFAULT_RESOURCE_LIMIT",
    "ClientIdNotAllowed",
    "Decision",
    "Policy",
    "PolicyLoadError",
    "Refusal",
    "Rule",
    "RuleMatch",
    "TokenRequest",
    "TopicNotGranted",
    "allowed_client_ids",
    "check_client_id",
    "check_limits",
    "evaluate",
    "explain",
    "load_policy",
    "parse_policy",
    "restrict",
    "token_plan",
]
