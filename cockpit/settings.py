"""Cockpit settings: one module, configured entirely from the environment.

Unset variables fall back to the embedded default (a PostgreSQL cluster and a Valkey server, each
on a unix socket under ``var/``, started by ``make demo`` or ``manage.py``) so a machine needs no
servers; production sets ``DATABASE_URL`` and ``REDIS_URL``. See README.md § Production for every
variable.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from cockpit.lib import embedded_postgres
from cockpit.lib.env import (
    env_bool,
    env_database,
    env_float,
    env_int,
    env_list,
    env_str,
    redis_urls,
)
from cockpit.queues import CELERY_TASK_QUEUES, CELERY_TASK_ROUTES, Queue
from cockpit.schedule import BEAT_SCHEDULE

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("COCKPIT_VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var").resolve()

# `make demo` writes what it configured to var/demo.env, so that manage.py run in another terminal
# (while the demo runs, or after) finds the same configuration. The environment wins.
for _line in (VAR_DIR / "demo.env").read_text().splitlines() if (VAR_DIR / "demo.env").exists() else []:
    _name, _, _value = _line.partition("=")
    if _name.strip() and not _name.startswith("#"):
        os.environ.setdefault(_name.strip(), _value.strip())

DEBUG = env_bool("DEBUG", False)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY and (VAR_DIR / "secret_key").exists():
    # The key `make demo` made, so that manage.py in another terminal works as printed.
    SECRET_KEY = (VAR_DIR / "secret_key").read_text().strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (use a long random string). For local work "
            "use `make demo` / `make test`, which set one, or set DEBUG=true."
        )
    SECRET_KEY = "django-insecure-local-development-only"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the host names Cockpit is served under (comma-separated).")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if not _origin.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"CSRF_TRUSTED_ORIGINS entries need a scheme (https://host), got {_origin!r}.")
# The largest request body read (REST API bodies, forms): the API answers 413 above it, and the
# ASGI guard refuses a larger API body before it is read. OTLP has limits of its own (below).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("COCKPIT_MAX_BODY_BYTES", 2_621_440, minimum=64 * 1024)

INSTALLED_APPS = [
    "daphne",  # first, so `runserver` is the ASGI one
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "channels",
    "guardian",
    "axes",
    "pgtrigger",
    "ninja",  # serves Swagger/Redoc assets locally (without it the docs page uses a CDN)
    "cockpit",
    "fleet",
    "fleet.sandbox",
    "approvals",
    "traces",
    "finops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "cockpit.urls"
ASGI_APPLICATION = "cockpit.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "cockpit.context_processors.cockpit",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------
# The default is the embedded cluster in var/pg/ (see cockpit/lib/embedded_postgres.py).
DATABASES = {
    "default": env_database("DATABASE_URL", embedded_postgres.url(VAR_DIR / "pg")),
}
if env_str("COCKPIT_TEST_DATABASE") and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A test database of its own per test run, so two runs can share one server.
    DATABASES["default"]["TEST"] = {"NAME": env_str("COCKPIT_TEST_DATABASE")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Test processes (web, worker) started by the suite open the same file, so it cannot live
    # in memory.
    DATABASES["default"]["TEST"] = {"NAME": env_str("COCKPIT_TEST_DATABASE", str(VAR_DIR / "test-cockpit.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis / Valkey: Celery broker and results, channel layer, cache ---------------------------
# The default is where `make demo` runs its embedded Valkey (see cockpit/launcher.py).
REDIS_URL = env_str("REDIS_URL", f"unix://{VAR_DIR / 'valkey' / 'valkey.sock'}") or ""
_redis = redis_urls("REDIS_URL", REDIS_URL)
# Keys of this deployment (or of one test run) are prefixed so that several can share a server.
REDIS_PREFIX = env_str("COCKPIT_REDIS_PREFIX", "cockpit") or "cockpit"

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": _redis["client"],
        "KEY_PREFIX": REDIS_PREFIX,
        "TIMEOUT": 300,
    }
}

# Redis pub/sub: live events are hints (pages re-fetch what changed), so at-most-once delivery
# is enough, and a publish is one PUBLISH (about 4× cheaper than the list-based layer).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [_redis["client"]], "prefix": f"{REDIS_PREFIX}:asgi"},
    }
}

# --- Celery -----------------------------------------------------------------------------------
CELERY_BROKER_URL = _redis["celery"]
CELERY_RESULT_BACKEND = _redis["celery"]
CELERY_TASK_QUEUES = CELERY_TASK_QUEUES
CELERY_TASK_DEFAULT_QUEUE = Queue.DEFAULT.value
CELERY_TASK_ROUTES = CELERY_TASK_ROUTES
CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = timedelta(hours=6)
CELERY_TASK_IGNORE_RESULT = True  # tasks that need a result opt in
# One message at a time per worker process: a long task never sits on a prefetched queue while
# another worker is idle, and an acks_late task lost with its worker is the only one lost.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# acks_late is opted into per task (only idempotent tasks); a task whose worker died is then
# redelivered rather than dropped.
CELERY_TASK_ACKS_LATE = False
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TIME_LIMIT = env_int("COCKPIT_TASK_TIME_LIMIT", 900, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 30
# Redis re-delivers an unacknowledged message after the visibility timeout: it must exceed the
# longest task, or a slow acks_late task runs twice. Long waits (approvals, escalations) live in
# the database, never in the broker.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT * 4,
    "global_keyprefix": f"{REDIS_PREFIX}:celery:",
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"global_keyprefix": f"{REDIS_PREFIX}:celery:"}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_ALWAYS_EAGER = env_bool("COCKPIT_TASKS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Auth, roles, throttling ------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses locked-out credentials
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "fleet-overview"
LOGOUT_REDIRECT_URL = "login"
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous visitors have no perms
GUARDIAN_RAISE_403 = False

AXES_FAILURE_LIMIT = env_int("COCKPIT_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("COCKPIT_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False

# --- Sessions, cookies, HTTPS -----------------------------------------------------------------
HTTPS = env_bool("COCKPIT_HTTPS", not DEBUG)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("COCKPIT_SESSION_HOURS", 12, minimum=1) * 3600
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env_int("COCKPIT_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("COCKPIT_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("COCKPIT_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("COCKPIT_BEHIND_PROXY", False):
    # The load balancer terminates TLS and says so in X-Forwarded-Proto; run daphne with
    # --proxy-headers so client addresses (audit, login throttling) are the real ones.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Content Security Policy: no inline script anywhere, every asset from this origin.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# --- Static files -----------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "cockpit.plotting.PlotlyJsFinder",  # plotly.js from the installed plotly package, as plotly/plotly.min.js
]
# "collected": served from STATIC_ROOT after collectstatic, with hashed names and compression
# (production, make demo). "finders": straight from the app folders (tests, development).
STATIC_MODE = env_str("COCKPIT_STATIC", "finders" if DEBUG else "collected")
if STATIC_MODE not in {"collected", "finders"}:
    raise ImproperlyConfigured(f"COCKPIT_STATIC must be 'collected' or 'finders', not {STATIC_MODE!r}.")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "servestatic.storage.CompressedManifestStaticFilesStorage"
            if STATIC_MODE == "collected"
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
SERVESTATIC_USE_FINDERS = STATIC_MODE == "finders"
SERVESTATIC_AUTOREFRESH = STATIC_MODE == "finders"
SERVESTATIC_KEEP_ONLY_HASHED_FILES = True

# --- Email ------------------------------------------------------------------------------------
# EMAIL_HOST names an SMTP server; without one, mail is written to files under var/mail/ so
# nothing is lost and it can be read (check --deploy flags that as not for production).
EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    _use_tls = env_bool("EMAIL_USE_TLS", True)
    _use_ssl = env_bool("EMAIL_USE_SSL", False)
    if _use_tls and _use_ssl:
        raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be true.")
    _mailer = {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {
            "host": EMAIL_HOST,
            "port": env_int("EMAIL_PORT", 465 if _use_ssl else 587, minimum=1, maximum=65535),
            "username": env_str("EMAIL_HOST_USER", "") or "",
            "password": env_str("EMAIL_HOST_PASSWORD", "") or "",
            "use_tls": _use_tls,
            "use_ssl": _use_ssl,
            "timeout": env_int("EMAIL_TIMEOUT", 10, minimum=1),
        },
    }
else:
    _mailer = {
        "BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "OPTIONS": {"file_path": str(VAR_DIR / "mail")},
    }
del EMAIL_HOST
MAILERS = {"default": _mailer}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Cockpit <cockpit@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Internationalisation ---------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Observability ----------------------------------------------------------------------------
# Spans are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or the traces-specific
# variable) is set; otherwise tracing is configured without an exporter.
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "cockpit")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "axes": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# --- Cockpit ----------------------------------------------------------------------------------
COCKPIT = {
    # API keys are looked up on every request; last-used time is written at most this often.
    "API_KEY_TOUCH_SECONDS": 60,
    # Browser: live events for one fragment arriving within this window cause one re-fetch.
    "LIVE_COALESCE_MS": 200,
    # Runtime: a worker executing a run renews its lease every third of this; a run whose lease
    # ran out is presumed orphaned (its worker died) and re-enqueued by the sweeper.
    "RUN_LEASE_SECONDS": env_int("COCKPIT_RUN_LEASE_SECONDS", 30, minimum=2),
    # One task executes a run for at most this long, then hands it on to a fresh task (the
    # journal makes that cheap), so no task nears the time limit however long the run.
    "RUN_SLICE_SECONDS": env_int("COCKPIT_RUN_SLICE_SECONDS", 240, minimum=1),
    # Transient failures of a model or tool call: attempts, and the backoff (full jitter).
    "RETRY_MAX_ATTEMPTS": env_int("COCKPIT_RETRY_MAX_ATTEMPTS", 5, minimum=1),
    "RETRY_MAX_SECONDS": env_int("COCKPIT_RETRY_MAX_SECONDS", 120, minimum=1),
    "RETRY_BASE_SECONDS": env_float("COCKPIT_RETRY_BASE_SECONDS", 0.5, minimum=0),
    "RETRY_MAX_WAIT_SECONDS": env_float("COCKPIT_RETRY_MAX_WAIT_SECONDS", 20, minimum=0),
    # Circuit breakers per provider and per tool (state shared by all workers through Redis).
    "BREAKER_FAIL_MAX": env_int("COCKPIT_BREAKER_FAIL_MAX", 5, minimum=1),
    "BREAKER_RESET_SECONDS": env_int("COCKPIT_BREAKER_RESET_SECONDS", 30, minimum=1),
    # The demo keeps its agents busy: a new run every this many seconds (0: none).
    "DEMO_RUN_INTERVAL_SECONDS": env_int("COCKPIT_DEMO_RUN_INTERVAL", 20, minimum=0),
    # Runtime spans are stored in background batches this often (0: at once, in the run's own
    # thread — the in-process test suite uses that, so spans land in the test's transaction).
    "SPAN_EXPORT_DELAY_MS": env_int("COCKPIT_SPAN_EXPORT_DELAY_MS", 500, minimum=0),
    # OTLP ingestion: the largest body accepted as sent and once gunzipped (413 above either),
    # the longest string kept in an attribute (longer ones are cut, visibly), and how many
    # requests one web process stores at once (more wait up to OTLP_QUEUE_SECONDS, then get
    # 503 with Retry-After, which OTLP exporters honour).
    "OTLP_MAX_BODY_BYTES": env_int("COCKPIT_OTLP_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024),
    "OTLP_MAX_INFLATED_BYTES": env_int("COCKPIT_OTLP_MAX_INFLATED_BYTES", 64 * 1024 * 1024, minimum=1024),
    "OTLP_MAX_VALUE_CHARS": env_int("COCKPIT_OTLP_MAX_VALUE_CHARS", 16 * 1024, minimum=64),
    "OTLP_CONCURRENCY": env_int("COCKPIT_OTLP_CONCURRENCY", 4, minimum=1),
    "OTLP_QUEUE_SECONDS": env_float("COCKPIT_OTLP_QUEUE_SECONDS", 5, minimum=0),
    # Traces older than this many days are deleted, a batch at a time (incidents' traces stay).
    "TRACE_RETENTION_DAYS": env_int("COCKPIT_TRACE_RETENTION_DAYS", 30, minimum=1),
}
# Where people reach Cockpit (links in notifications), and the key signing the callbacks sent to
# external agents about their approval requests.
COCKPIT_BASE_URL = env_str("COCKPIT_BASE_URL", "http://127.0.0.1:8000") or "http://127.0.0.1:8000"
COCKPIT_CALLBACK_SECRET = (
    env_str("COCKPIT_CALLBACK_SECRET") or hashlib.sha256(f"cockpit-callbacks:{SECRET_KEY}".encode()).hexdigest()
)
# The audit log's chains are keyed (HMAC) with this key, which is never stored in the database:
# set it in production, apart from SECRET_KEY (the fallback derives it from SECRET_KEY, so that
# changing SECRET_KEY would change it too). After a change, list the former key in
# COCKPIT_AUDIT_OLD_KEYS so that the rows and anchors signed with it still verify.
COCKPIT_AUDIT_KEY_DERIVED = not env_str("COCKPIT_AUDIT_KEY")  # `check --deploy` warns about it
COCKPIT_AUDIT_KEY = env_str("COCKPIT_AUDIT_KEY") or hashlib.sha256(f"cockpit-audit:{SECRET_KEY}".encode()).hexdigest()
if len(COCKPIT_AUDIT_KEY) < 32:
    raise ImproperlyConfigured("COCKPIT_AUDIT_KEY must be at least 32 characters (use a long random string).")
COCKPIT_AUDIT_OLD_KEYS = env_list("COCKPIT_AUDIT_OLD_KEYS", [])
# Signed checkpoints of the audit chains' heads (see cockpit/audit_anchor.py): a JSON line per
# checkpoint, in one file per day under this folder; optionally also POSTed to a webhook.
COCKPIT_AUDIT_ANCHOR_DIR = Path(
    env_str("COCKPIT_AUDIT_ANCHOR_DIR", str(VAR_DIR / "audit-anchors")) or VAR_DIR / "audit-anchors"
).resolve()
COCKPIT_AUDIT_ANCHOR_WEBHOOK = env_str("COCKPIT_AUDIT_ANCHOR_WEBHOOK", "") or ""
if COCKPIT_AUDIT_ANCHOR_WEBHOOK and not COCKPIT_AUDIT_ANCHOR_WEBHOOK.startswith(("http://", "https://")):
    raise ImproperlyConfigured("COCKPIT_AUDIT_ANCHOR_WEBHOOK must be an http:// or https:// URL.")
COCKPIT_AUDIT_ANCHOR_WEBHOOK_SECRET = env_str("COCKPIT_AUDIT_ANCHOR_WEBHOOK_SECRET", "") or ""
# `make demo` sets COCKPIT_DEMO: demo agents then start runs on their own.
COCKPIT_DEMO = env_bool("COCKPIT_DEMO", False)
# Modules whose @agent and @tool functions are registered when the fleet app starts.
COCKPIT_AGENT_MODULES = env_list("COCKPIT_AGENT_MODULES", ["fleet.demo_agents"])

# FinOps: span or resource attributes whose values are cost tags (a dimension of rollups, budgets
# and the chargeback export), comma-separated.
COCKPIT_FINOPS_TAG_KEYS = tuple(env_list("COCKPIT_FINOPS_TAG_KEYS", ["cockpit.cost_center"]))
