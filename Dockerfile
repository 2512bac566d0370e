# The tokenbill app image. docker-compose.yml runs it three ways: `web` (gunicorn),
# `migrate` (flask --app webapp migrate) and `emulator` (python -m workshop.emulator).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code edits do not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Only what the app runs; .dockerignore keeps local state and secrets (.env, .data) out too.
COPY pyproject.toml gunicorn.conf.py ./
COPY db ./db
COPY frontend ./frontend
COPY scripts ./scripts
# The workshop only for compose's `emulator` service (dev); the app never imports it.
COPY workshop ./workshop
COPY webapp ./webapp

# Files stay root-owned and read-only for the process: it runs as an unprivileged user.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tokenbill
USER tokenbill

EXPOSE 5000
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:5000", "--workers", "2", "--threads", "8", "webapp:create_app()"]
