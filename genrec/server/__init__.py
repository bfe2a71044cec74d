"""genrec's HTTP service: ``create_app(ServerSettings(...))`` or ``genrec serve``."""

from genrec.server.app import create_app
from genrec.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
