"""The operator web console (``scheduled-prompts console``): server-rendered pages over
the library — the prompts (filters, search, cursor pages), one prompt (its next fire
times, recent deliveries, pause/resume/trigger/cancel), recent failures and the load of
the next 24 hours — behind a token login, with no JavaScript.

A thin adapter, like ``mcp_server.py``: every read and every action is a library plan
driven by :func:`scheduled_prompts.aio.arun`; nothing here imports Celery.
"""
