"""scheduled-prompts: prompts scheduled for later, stored in Redis, fired by Celery."""

from __future__ import annotations

from .api import (
    cancel_prompt,
    cleanup_expired_prompts,
    get_prompt,
    list_prompts,
    pause_prompt,
    resume_prompt,
    schedule_many,
    schedule_prompt,
    update_prompt,
)
from .core import PromptPage
from .errors import (
    ConflictingPrompt,
    InvalidSchedule,
    PromptError,
    PromptNotFound,
    QuotaExceeded,
    StoreUnavailable,
)
from .models import Kind, ScheduledPrompt, Status
from .schedules import preview_schedule
from .settings import Settings, configure, get_settings

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The Celery app is built on first use, so importing the package stays light.
    if name in ("app", "celery"):
        from .celery_app import app  # noqa: PLC0415

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConflictingPrompt",
    "InvalidSchedule",
    "Kind",
    "PromptError",
    "PromptNotFound",
    "PromptPage",
    "QuotaExceeded",
    "ScheduledPrompt",
    "Settings",
    "Status",
    "StoreUnavailable",
    "cancel_prompt",
    "cleanup_expired_prompts",
    "configure",
    "get_prompt",
    "get_settings",
    "list_prompts",
    "pause_prompt",
    "preview_schedule",
    "resume_prompt",
    "schedule_many",
    "schedule_prompt",
    "update_prompt",
]
