"""The outbox's schema: its named, ordered migrations (applied by ``edgefed.store.migrate``).

Append new migrations to ``MIGRATIONS``; never edit or reorder applied ones.
"""

from __future__ import annotations

import sqlite_utils

from edgefed.store import Migrations


def create_jobs(db: sqlite_utils.Database) -> None:
    table = db.table("jobs")
    table.create(
        {
            "id": str,
            "device": str,
            "model": str,
            "requester": str,
            "payload_kind": str,
            "payload_bytes": int,
            "priority": int,
            "deadline": int,
            "created": int,
            "status": str,
            "started": int,
            "ended": int,
            "updated": int,
            "iteration": int,
            "next_attempt": int,
            "last_error": str,
            "reason": str,
            "metadata": str,
            "local_summary": str,
            "local_result": str,
            "result": str,
        },
        pk="id",
        not_null={
            "device",
            "model",
            "requester",
            "payload_kind",
            "payload_bytes",
            "priority",
            "deadline",
            "created",
            "status",
            "updated",
            "iteration",
            "next_attempt",
            "reason",
            "metadata",
        },
        defaults={"iteration": 0, "requester": "", "reason": "", "metadata": "{}"},
    )
    # Partial indexes: a job enters and leaves each one only at the transitions that matter,
    # so most status changes touch no index. The WHERE texts must stay identical to the
    # queries' (see outbox.sql_in): SQLite only uses a partial index whose WHERE the query
    # repeats.
    for statement in (
        # claim: due jobs, highest priority first, then oldest
        "CREATE INDEX jobs_claim ON jobs (priority DESC, created) WHERE status IN ('Enqueue')",
        # retry timers of jobs sent and waiting for an answer
        "CREATE INDEX jobs_timer ON jobs (next_attempt) "
        "WHERE status IN ('Inferencing', 'Preprocessing', 'Preprocessing_complete')",
        # deadlines of every job still waiting for the server
        "CREATE INDEX jobs_deadline ON jobs (deadline) "
        "WHERE status IN ('Enqueue', 'Inferencing', 'Preprocessing', 'Preprocessing_complete')",
        # retention of finished jobs
        "CREATE INDEX jobs_ended ON jobs (ended) WHERE ended IS NOT NULL",
    ):
        db.execute(statement)
    # Payloads live apart so that a status change rewrites a small row, not the frame.
    db.table("payloads").create({"id": str, "body": bytes}, pk="id", not_null={"body"})


MIGRATIONS: Migrations = [
    ("0001_create_jobs", create_jobs),
]
