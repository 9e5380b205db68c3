"""A campaign on disk: one SQLite file holding its inputs, the items to rate and every rating.

Every write is one transaction (a rating submission with all its criteria is stored whole or not at
all), the file is in WAL mode so the rating server and ``report`` can read while raters write, and
a campaign resumes where it stopped: ``create`` skips the inputs it already finished, and each
rater's random order is a fixed function of the campaign seed and the rater's name, so a rater who
comes back continues with the next unrated item.

Tables: ``meta`` (protocol, systems, seed, raters per item; JSON values), ``inputs`` (prompt or
image + question, the human answer where known), ``items`` (one system's output for one input),
``ratings`` (item, rater, criterion, score; one row per criterion).
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from vilgkit.errors import VilgkitError
from vilgkit.humaneval.protocols import PROTOCOLS, Protocol

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (
  id INTEGER PRIMARY KEY, text TEXT, question TEXT, truth TEXT, image BLOB, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY, input_id INTEGER NOT NULL REFERENCES inputs(id), system TEXT NOT NULL,
  output_text TEXT, image BLOB, UNIQUE (input_id, system));
CREATE TABLE IF NOT EXISTS ratings (
  item_id INTEGER NOT NULL REFERENCES items(id), rater TEXT NOT NULL, criterion TEXT NOT NULL,
  score INTEGER NOT NULL, created REAL NOT NULL, PRIMARY KEY (item_id, rater, criterion));
"""


class CampaignError(VilgkitError):
    """A refused campaign operation (``status``: the HTTP status the rating server answers with)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def check_rater(rater: Any) -> str:
    """A rater's name: 1–64 printable characters (it is stored, and shown in the report's counts only)."""
    if not isinstance(rater, str) or not rater.strip() or len(rater.strip()) > 64 or not rater.strip().isprintable():
        raise CampaignError("rater: give a name of 1 to 64 printable characters")
    return rater.strip()


class Campaign:
    """One campaign file. Open an existing one with ``Campaign(path)``; make one with :meth:`create`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CampaignError(f"campaign not found: {self.path}", status=404)
        meta = self._read_meta()
        if meta.get("schema") != SCHEMA_VERSION or meta.get("protocol") not in PROTOCOLS:
            raise CampaignError(f"{self.path} is not a vilgkit campaign (schema {SCHEMA_VERSION})")
        self.meta = meta
        self.protocol: Protocol = PROTOCOLS[meta["protocol"]]

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any]) -> Campaign:
        """A new campaign file, or the existing one when its settings are the same (to resume ``create``)."""
        path = Path(path)
        meta = {**meta, "schema": SCHEMA_VERSION}
        if path.exists():
            existing = cls(path)
            same = {k: existing.meta.get(k) for k in meta if k != "created"} == {
                k: v for k, v in meta.items() if k != "created"
            }
            if not same:
                raise CampaignError(f"{path} already holds a different campaign; choose another file")
            return existing
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
        return cls(path)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        """The rows of one read-only query, on a connection of its own."""
        with closing(self.connect()) as conn:
            return conn.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: tuple | list = ()) -> sqlite3.Row | None:
        """The first row of :meth:`query`, or ``None``."""
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def _read_meta(self) -> dict[str, Any]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as err:
            raise CampaignError(f"{self.path} is not a vilgkit campaign ({err})") from None

    # ------------------------------------------------------------------ building

    def input_ids(self, done: bool | None = None) -> list[int]:
        query = "SELECT id FROM inputs" + ("" if done is None else f" WHERE done = {int(done)}") + " ORDER BY id"
        return [r[0] for r in self.query(query)]

    def add_inputs(self, rows: list[dict[str, Any]]) -> None:
        """The campaign's inputs (``text``, ``question``, ``truth``, ``image`` PNG bytes), once."""
        with closing(self.connect()) as conn, conn:
            if conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]:
                return  # resuming: the inputs were stored by the first `create`
            conn.executemany(
                "INSERT INTO inputs (text, question, truth, image) VALUES (?, ?, ?, ?)",
                [(r.get("text"), r.get("question"), r.get("truth"), r.get("image")) for r in rows],
            )

    def inputs(self, ids: list[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(ids))
        return self.query(f"SELECT * FROM inputs WHERE id IN ({marks}) ORDER BY id", ids)

    def add_items(self, input_ids: list[int], items: list[dict[str, Any]]) -> None:
        """The outputs for ``input_ids`` (``input_id``, ``system``, ``output_text``, ``image``), in one
        transaction that also marks those inputs done.

        The rows are stored in a shuffled order: item ids are visible to raters (in image URLs), and
        ids that alternate A, B, A, B… would tell them which model made an item."""
        rows = list(items)
        random.Random(f"{self.meta['seed']}|{min(input_ids, default=0)}").shuffle(rows)
        with closing(self.connect()) as conn, conn:
            conn.executemany(
                "INSERT OR REPLACE INTO items (input_id, system, output_text, image) VALUES (?, ?, ?, ?)",
                [(i["input_id"], i["system"], i.get("output_text"), i.get("image")) for i in rows],
            )
            conn.executemany("UPDATE inputs SET done = 1 WHERE id = ?", [(i,) for i in input_ids])

    # ------------------------------------------------------------------ rating

    def _order_key(self, rater: str, item_id: int) -> str:
        # Each rater sees the items in their own random order, fixed by the campaign seed and the name.
        return hashlib.sha256(f"{self.meta['seed']}|{rater}|{item_id}".encode()).hexdigest()

    def next_item(self, rater: str) -> dict[str, Any] | None:
        """The rater's next item (blind: no system), or ``None`` when nothing is left for them."""
        rater = check_rater(rater)
        k = int(self.meta["raters_per_item"])
        rows = self.query(
            "SELECT i.id, COUNT(DISTINCT r.rater) AS n, SUM(r.rater = ?) AS mine FROM items i "
            "LEFT JOIN ratings r ON r.item_id = i.id GROUP BY i.id",
            (rater,),
        )
        open_items = [r["id"] for r in rows if not r["mine"] and r["n"] < k]
        if not open_items:
            return None
        return self.item(min(open_items, key=lambda i: self._order_key(rater, i)))

    def item(self, item_id: int) -> dict[str, Any]:
        """What a rater sees of an item: the text/question, the output, the image's URL; never the system."""
        row = self.query_one(
            "SELECT i.id, i.output_text, i.image IS NOT NULL AS has_image, n.text, n.question "
            "FROM items i JOIN inputs n ON n.id = i.input_id WHERE i.id = ?",
            (item_id,),
        )
        if row is None:
            raise CampaignError(f"item {item_id}: no such item", status=404)
        return {
            "id": row["id"],
            "text": row["text"],
            "question": row["question"],
            "output": row["output_text"],
            "image": f"/api/items/{row['id']}/image",
        }

    def image(self, item_id: int) -> bytes:
        """The PNG shown with an item: the generated image (text→image) or the input image."""
        row = self.query_one(
            "SELECT COALESCE(i.image, n.image) FROM items i JOIN inputs n ON n.id = i.input_id WHERE i.id = ?",
            (item_id,),
        )
        if row is None or row[0] is None:
            raise CampaignError(f"item {item_id}: no such item or no image", status=404)
        return bytes(row[0])

    def rate(self, rater: str, item_id: int, scores: dict[str, Any]) -> None:
        """Store one rater's scores for one item, every criterion of the protocol, in one transaction."""
        rater = check_rater(rater)
        if not isinstance(scores, dict):
            raise CampaignError("scores: give an object mapping each criterion to a score")
        expected = [c.key for c in self.protocol.criteria]
        if sorted(scores) != sorted(expected):
            raise CampaignError(
                f"scores: give exactly the criteria {', '.join(expected)}; got {', '.join(scores) or 'none'}"
            )
        try:
            checked = {key: self.protocol.criterion(key).check(value) for key, value in scores.items()}
        except ValueError as err:
            raise CampaignError(f"scores: {err}") from None
        now = time.time()
        with closing(self.connect()) as conn, conn:
            if conn.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
                raise CampaignError(f"item {item_id}: no such item", status=404)
            try:
                conn.executemany(
                    "INSERT INTO ratings VALUES (?, ?, ?, ?, ?)",
                    [(item_id, rater, key, value, now) for key, value in checked.items()],
                )
            except sqlite3.IntegrityError:
                raise CampaignError(f"item {item_id}: {rater} has already rated it", status=409) from None

    # ------------------------------------------------------------------ reading

    def ratings(self) -> list[dict[str, Any]]:
        """Every rating with its item's system and input: ``item``, ``input``, ``system``, ``rater``,
        ``criterion``, ``score``."""
        rows = self.query(
            "SELECT r.item_id, i.input_id, i.system, r.rater, r.criterion, r.score FROM ratings r "
            "JOIN items i ON i.id = r.item_id ORDER BY r.item_id, r.rater, r.criterion"
        )
        fields = ("item", "input", "system", "rater", "criterion", "score")
        return [dict(zip(fields, r)) for r in rows]

    def counts(self, rater: str | None = None) -> dict[str, int]:
        """Items, ratings needed (items × raters per item), ratings given (by ``rater``, when named)."""
        with closing(self.connect()) as conn:
            items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            given = conn.execute("SELECT COUNT(DISTINCT item_id || '|' || rater) FROM ratings").fetchone()[0]
            mine = (
                conn.execute(
                    "SELECT COUNT(DISTINCT item_id) FROM ratings WHERE rater = ?",
                    (rater,),
                ).fetchone()[0]
                if rater
                else None
            )
        out = {
            "items": items,
            "needed": items * int(self.meta["raters_per_item"]),
            "given": given,
        }
        if mine is not None:
            out["mine"] = mine
        return out
