"""Typed SQLAlchemy models. Importing this package opens no connection."""

from models.alert import AlertHistory, AlertRule, AlertState, Notification
from models.api_key import ApiKey
from models.base import Base
from models.dead_letter import DeadLetter
from models.event import AnalyticsEvent
from models.price import CostRate, CostRateScope, PricedModel, PriceOverride
from models.rollup import RollupDaily, RollupDailyUser, RollupHourly, RollupPendingBatch
from models.tenant_name import TenantName
from models.webhook import Delivery, Webhook

__all__ = [
    "AlertHistory",
    "AlertRule",
    "AlertState",
    "AnalyticsEvent",
    "ApiKey",
    "Base",
    "CostRate",
    "CostRateScope",
    "DeadLetter",
    "Delivery",
    "Notification",
    "PriceOverride",
    "PricedModel",
    "RollupDaily",
    "RollupDailyUser",
    "RollupHourly",
    "RollupPendingBatch",
    "TenantName",
    "Webhook",
]
