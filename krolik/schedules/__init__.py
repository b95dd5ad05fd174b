"""Schedules: tasks made on a timetable (cron or every N seconds), each tick exactly once.

``timing.py`` says when a schedule's ticks fall (time zones and daylight-saving changes
included) and which of them to run after a downtime; ``scheduler.py`` is the loop every
worker runs; the store enqueues a tick's task in the transaction that records the tick,
under a unique (schedule, tick time) key, so however many schedulers run, each tick makes
one task.
"""
