"""Failed logins counted per (client address, username), with a higher ceiling per address.

A guesser is blocked for one username after `MAX_FAILURES` failures within `WINDOW_S`, so the
same account typed correctly from the same address (every local account shares 127.0.0.1 on
the launcher) and other users keep logging in; an address that fails `ADDRESS_MAX_FAILURES`
times across usernames (spraying) is blocked for every username. The counters live in one
SQLite file that every uvicorn worker shares.
"""

from __future__ import annotations

import sqlite3
import time

MAX_FAILURES = 10
ADDRESS_MAX_FAILURES = 50
WINDOW_S = 60.0
BLOCK_S = 60.0


class LoginThrottle:
    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS failure (address TEXT, username TEXT, at REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS block (key TEXT PRIMARY KEY, until REAL)")

    def _connect(self) -> sqlite3.Connection:
        # Autocommit; each write takes the file's lock at once, so workers serialize there.
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def blocked_for(self, address: str, username: str) -> float:
        """Seconds this username stays blocked from this address, 0 when it may log in."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT max(until) FROM block WHERE key IN (?, ?)",
                (_address_key(address), _user_key(address, username)),
            ).fetchone()
        return max(0.0, rows[0] - time.time()) if rows[0] else 0.0

    def record_failure(self, address: str, username: str) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM failure WHERE at < ?", (now - WINDOW_S,))
            db.execute("INSERT INTO failure VALUES (?, ?, ?)", (address, username, now))
            (by_user,) = db.execute(
                "SELECT count(*) FROM failure WHERE address = ? AND username = ?",
                (address, username),
            ).fetchone()
            (by_address,) = db.execute(
                "SELECT count(*) FROM failure WHERE address = ?", (address,)
            ).fetchone()
            if by_user >= MAX_FAILURES:
                self._block(db, _user_key(address, username), now)
                db.execute(
                    "DELETE FROM failure WHERE address = ? AND username = ?", (address, username)
                )
            if by_address >= ADDRESS_MAX_FAILURES:
                self._block(db, _address_key(address), now)
                db.execute("DELETE FROM failure WHERE address = ?", (address,))
            db.execute("COMMIT")

    @staticmethod
    def _block(db: sqlite3.Connection, key: str, now: float) -> None:
        db.execute("INSERT OR REPLACE INTO block VALUES (?, ?)", (key, now + BLOCK_S))


def _address_key(address: str) -> str:
    return f"address\0{address}"


def _user_key(address: str, username: str) -> str:
    return f"user\0{address}\0{username}"
