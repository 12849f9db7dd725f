"""scheduled-prompts: prompts scheduled for later, stored in Redis, fired by Celery."""

from __future__ import annotations

from .api import (
    cancel_prompt,
    cleanup_expired_prompts,
    export_prompts,
    get_prompt,
    get_stats,
    hydrate_scheduled_prompts,
    import_prompts,
    list_prompts,
    pause_prompt,
    resume_prompt,
    schedule_many,
    schedule_prompt,
    tick_scheduled_prompts,
    trigger_prompt,
    update_prompt,
)
from .errors import (
    ConflictingPrompt,
    DeliveryError,
    InvalidSchedule,
    PermanentDeliveryError,
    PromptError,
    PromptNotFound,
    QuotaExceeded,
    RunnerNotConfigured,
    StoreUnavailable,
)
from .models import Kind, ScheduledPrompt, Status
from .runners import LogRunner, WebhookRunner, set_bot_runner, verify_signature
from .schedules import preview_schedule
from .settings import Settings, configure, get_settings
from .verbs import PromptPage

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The Celery app is built on first use, so importing the package stays light.
    if name in ("app", "celery"):
        from .celery_app import app  # noqa: PLC0415

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConflictingPrompt",
    "DeliveryError",
    "InvalidSchedule",
    "Kind",
    "LogRunner",
    "PermanentDeliveryError",
    "PromptError",
    "PromptNotFound",
    "PromptPage",
    "QuotaExceeded",
    "RunnerNotConfigured",
    "ScheduledPrompt",
    "Settings",
    "Status",
    "StoreUnavailable",
    "WebhookRunner",
    "cancel_prompt",
    "cleanup_expired_prompts",
    "configure",
    "export_prompts",
    "get_prompt",
    "get_settings",
    "get_stats",
    "hydrate_scheduled_prompts",
    "import_prompts",
    "list_prompts",
    "pause_prompt",
    "preview_schedule",
    "resume_prompt",
    "schedule_many",
    "schedule_prompt",
    "set_bot_runner",
    "tick_scheduled_prompts",
    "trigger_prompt",
    "update_prompt",
    "verify_signature",
]
