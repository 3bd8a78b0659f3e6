"""ASGI entry point (daphne): Django views over HTTP, the live bus over websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cockpit.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: they load models.
import json  # noqa: E402

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from cockpit.api import max_body_bytes, too_large  # noqa: E402
from cockpit.routing import websocket_urlpatterns  # noqa: E402
from cockpit.telemetry import configure_tracing  # noqa: E402
from traces.receiver import BodyLimit  # noqa: E402

configure_tracing("cockpit-web")

application = ProtocolTypeRouter(
    {
        # Bodies over the limits are refused before they are read: OTLP's, and the REST API's.
        "http": BodyLimit(
            BodyLimit(django_asgi_app),
            "/api/",
            prefix=True,
            limit=max_body_bytes,
            reply=lambda headers, limit: ("application/json", json.dumps(too_large(limit)).encode()),
        ),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
