"""The statements both databases share, in SQLAlchemy Core, one module per concern.

Each state change is one guarded ``UPDATE ... WHERE status = <expected> ... RETURNING``:
it names what it expects to find, so a duplicate delivery, a stale worker or a second
relay finds nothing to change. Where a task becomes due (enqueue, retry, rescue, release,
dispatch again) the same transaction writes its outbox row, so a task is never committed
without the record that will dispatch it.

The hot statements (plain enqueue, claims, completions, the relay's claim and delete)
are written once per database instead: raw SQL on PostgreSQL (``store/postgres.py``),
Core on SQLite (``store/sqlite.py``). ``store.py`` puts the concerns together.
"""
