"""Model adapters: one file per kind behind one small interface (``base.Adapter``),
found through ``registry``. Never imports Celery; imports only schemas from ``jobs``."""
