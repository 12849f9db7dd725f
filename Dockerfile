# scheduled-prompts: one image for the Celery worker, beat and Flower (see compose.yaml).
# No settings or secrets are baked in: everything comes from SCHEDULED_PROMPTS_* and
# FLOWER_* variables at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package (with the flower extra) from a scratch copy of the sources, so
# that only the installed package is importable at run time.
WORKDIR /tmp/src
COPY pyproject.toml README.md LICENSE ./
COPY scheduled_prompts/ ./scheduled_prompts/
RUN pip install --no-cache-dir ".[flower]" \
    && cd / && rm -rf /tmp/src

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app

# celeryconfig.py (the deployment's Celery config) must be importable: it sits in the
# working directory, which celery puts on sys.path, and PYTHONPATH names it as well.
WORKDIR /app
COPY celeryconfig.py ./
ENV PYTHONPATH=/app

USER 10001:10001

CMD ["celery", "-A", "scheduled_prompts", "worker", "--loglevel=INFO"]
