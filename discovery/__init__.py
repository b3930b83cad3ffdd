"""pacs-discovery's core: no Celery imports. See README.md for the architecture."""
