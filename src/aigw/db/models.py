"""Every table, imported once so alembic and tests see the whole metadata."""

from aigw.apikeys.models import ApiKey, IdempotencyRecord
from aigw.audit.models import AuditEntry
from aigw.budgets.models import BudgetCounter, BudgetLease, RateWindow
from aigw.db.base import Base
from aigw.providers.models import Provider, ProviderModel
from aigw.usage.models import UsageRecord

metadata = Base.metadata

__all__ = [
    "ApiKey",
    "AuditEntry",
    "BudgetCounter",
    "BudgetLease",
    "IdempotencyRecord",
    "Provider",
    "ProviderModel",
    "RateWindow",
    "UsageRecord",
    "metadata",
]
