"""The version of this client: the server's version, as both are released together."""

__version__ = "0.1.0"
