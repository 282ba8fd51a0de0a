"""The producer: the FastAPI app, the Python client and the submit CLI. Never imports torch."""
