"""zuulpush: a connection-dense push-messaging edge (WebSocket and Server-Sent Events)."""

__version__ = "0.1.0"
