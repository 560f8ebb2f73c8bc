"""The HTTP service: visual search and recommendations over one catalog index, and its web page."""

from visnet.service.app import create_app, serve
from visnet.service.settings import ServiceSettings, load_settings

__all__ = ["ServiceSettings", "create_app", "load_settings", "serve"]
