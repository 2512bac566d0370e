"""gunicorn settings for every way tokenbill is served (Dockerfile, compose, scripts/run).

gunicorn reads ./gunicorn.conf.py by default; the commands also name it. Command-line flags
(bind, workers, threads) still win. Why these limits: the request line and headers are
parsed before Flask sees anything, so they are bounded here; bodies are bounded by Flask
(MAX_CONTENT_LENGTH, refused from Content-Length before reading, see webapp/security.py).
"""

limit_request_line = 4094  # bytes in "GET /path?query HTTP/1.1"
limit_request_fields = 50  # headers per request
limit_request_field_size = 8190  # bytes per header
timeout = 90  # a worker silent this long is restarted (agent calls time out at 60 s)
graceful_timeout = 30
keepalive = 5
