"""The endpoints hookdrop calls: configuration (``config``) and request bodies (``render``)."""

from hookdrop.endpoints.config import (
    DEFAULT,
    Endpoint,
    Endpoints,
    load_endpoints,
    mask_url,
)
from hookdrop.endpoints.live import LiveEndpoints
from hookdrop.endpoints.render import Renderer, RenderError

__all__ = [
    "DEFAULT",
    "Endpoint",
    "Endpoints",
    "LiveEndpoints",
    "RenderError",
    "Renderer",
    "load_endpoints",
    "mask_url",
]
