"""Celery workers: ``celery -A worker worker -Q queries`` and the aggregator
``celery -A worker worker -Q results -c 1``."""

from worker.app import app

__all__ = ["app"]
