"""API keys: only a hash of each is stored."""

from __future__ import annotations

from sqlalchemy import insert, select, update

from krolik.errors import InvalidTransition
from krolik.store.records import ApiKey
from krolik.store.sql.core import SqlCore
from krolik.store.sql.rows import row_to_api_key
from krolik.store.tables import api_keys

API_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.scope,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


class KeyStatements(SqlCore):
    async def create_api_key(self, name: str, scope: str, key_hash: str) -> ApiKey:
        async with self._tx() as conn:
            taken = (
                await conn.execute(select(api_keys.c.id).where(api_keys.c.name == name))
            ).first()
            if taken is not None:
                raise InvalidTransition(f"an API key named {name!r} exists already")
            row = (
                (
                    await conn.execute(
                        insert(api_keys)
                        .values(
                            name=name,
                            scope=scope,
                            key_hash=key_hash,
                            created_at=self.dialect.clock(),
                        )
                        .returning(*API_KEY_COLUMNS)
                    )
                )
                .mappings()
                .one()
            )
        return row_to_api_key(row)

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._tx() as conn:
            rows = (
                (await conn.execute(select(*API_KEY_COLUMNS).order_by(api_keys.c.id)))
                .mappings()
                .all()
            )
        return [row_to_api_key(row) for row in rows]

    async def revoke_api_key(self, name: str) -> bool:
        stmt = (
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=self.dialect.clock())
            .returning(api_keys.c.id)
        )
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        stmt = select(*API_KEY_COLUMNS).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return row_to_api_key(row) if row else None
