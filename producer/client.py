"""The Python client ships as its own distribution, ``mlq-client`` (clients/python), which
needs httpx alone: applications that only submit jobs do not install the server. Here for
the server's own commands (``mlq submit``, ``mlq batch``, ``mlq demo``)."""

from mlq_client import TERMINAL, ApiError, BatchClient, Client

__all__ = ["TERMINAL", "ApiError", "BatchClient", "Client"]
