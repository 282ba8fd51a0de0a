"""Queue plumbing: the Celery app and routing, the runner, GPU placement."""
