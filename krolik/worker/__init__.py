"""Workers: take deliveries, claim in the store, run handlers, record the outcome."""

from krolik.worker.runtime import Worker

__all__ = ["Worker"]
