"""The row every `db` contender writes: a note keyed by the task id, written once (the same
statement notes:create's service sends, without the ORM's own per-call overhead on either side),
so the contenders differ only in how they get a session and a connection."""

from sqlalchemy import text

NOTE_INSERT = text(
    "INSERT INTO notes (task_id, title, body) VALUES (:task_id, :title, '')"
    " ON CONFLICT (task_id) DO NOTHING RETURNING id"
)
