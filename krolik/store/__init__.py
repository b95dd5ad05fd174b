"""The store seam: the source of truth for tasks."""
