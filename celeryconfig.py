"""Celery configuration of this deployment, built from ``SCHEDULED_PROMPTS_*`` settings.

``scheduled_prompts`` applies this module on top of its own defaults when it is
importable (run ``celery`` from this folder). Add or override Celery settings below.
"""

from scheduled_prompts.celery_app import celery_config

globals().update(celery_config())
