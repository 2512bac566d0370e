# The tokenbill images. The default target, `app`, is the product alone: docker-compose.yml
# runs it as `web` (gunicorn), `migrate`, `db-logins` and `workers`. The `workshop` target adds
# the dev-only workshop for compose's `emulator` service; the product never imports it, and a
# production image built from this file (`docker build .`) does not contain it.
FROM python:3.11-slim AS product

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
COPY webapp ./webapp

# Files stay root-owned and read-only for the process: it runs as an unprivileged user.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tokenbill
USER tokenbill

EXPOSE 5000
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:5000", "--workers", "2", "--threads", "8", "webapp:create_app()"]

# The offline Stripe Checkout emulator (compose's `emulator` service, development only).
FROM product AS workshop
COPY workshop ./workshop
CMD ["python", "-m", "workshop.emulator", "--host", "0.0.0.0", "--port", "12112"]

# Last, so the default: the product without the workshop.
FROM product AS app
