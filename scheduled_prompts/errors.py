"""The exceptions the public API raises.

Every error derives from :class:`PromptError` and builds its own message, so callers can
show ``str(exc)`` to a person (or to a model) as it is.
"""

from __future__ import annotations


class PromptError(Exception):
    """Base class of every error raised by scheduled-prompts."""


class InvalidSchedule(PromptError, ValueError):
    """A request was rejected before anything was written.

    Raised for every bad input to a scheduling call: the schedule itself (``at``,
    ``delay``, ``cron``, ``timezone``, bounds) and the fields that travel with it (prompt
    text, ids, metadata). The message says what was wrong and what is accepted.
    """


class PromptNotFound(PromptError, LookupError):
    """No prompt has this id (or it belongs to another user)."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        super().__init__(f"no scheduled prompt with id {prompt_id!r}")


class ConflictingPrompt(PromptError):
    """The request conflicts with what is stored.

    Either an idempotent create (``prompt_id=``) whose arguments differ from the stored
    prompt, or a transition the prompt's current status does not allow (pausing an
    executed prompt, for example).
    """


class QuotaExceeded(PromptError):
    """The user already has as many live and paused prompts as the settings allow."""

    def __init__(self, user_id: str, limit: int) -> None:
        self.user_id = user_id
        self.limit = limit
        super().__init__(
            f"user {user_id!r} already has {limit} live or paused prompts, the most "
            "allowed (SCHEDULED_PROMPTS_MAX_PROMPTS_PER_USER); cancel one first"
        )


class StoreUnavailable(PromptError):
    """Redis could not be reached or answered with an error."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"Redis at {url} is unavailable: {reason}")


class RunnerNotConfigured(PromptError):
    """A worker has no runner for a prompt's platform; the occurrence stays pending."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        super().__init__(
            f"no runner for platform {platform!r}: set SCHEDULED_PROMPTS_RUNNER="
            "'pkg.module:attr' (loaded in each worker) or call set_bot_runner(runner) "
            "in the worker process; the occurrence stays pending until then"
        )


class DeliveryError(PromptError):
    """A runner could not deliver now; the delivery is retried with backoff."""


class PermanentDeliveryError(DeliveryError):
    """A runner refused the delivery for good (e.g. HTTP 4xx): it is not retried."""
