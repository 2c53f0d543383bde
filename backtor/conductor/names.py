"""The names Backtor's Conductor definitions carry, spelled once (they match workflows/*.json)."""

from __future__ import annotations

from typing import Final

# Workflows
CREATE_BACKUP: Final = "create_backup"
REMOVE_BACKUP: Final = "remove_backup"
RESTORE_BACKUP: Final = "restore_backup"
VERIFY_BACKUP: Final = "verify_backup"
TICK: Final = "backtor_scheduler"
TICK_CORRELATION_ID: Final = "backtor-scheduler"


def tick_correlation_id(shard: int) -> str:
    """Tick shard `shard`'s correlation id: shard 0 keeps TICK_CORRELATION_ID, as before."""
    return TICK_CORRELATION_ID if shard == 0 else f"{TICK_CORRELATION_ID}-shard-{shard}"


# Backtor's own tasks
EVALUATE_SCHEDULE: Final = "evaluate_schedule"
APPLY_RETENTION: Final = "apply_retention"
RECORD_REMOVAL: Final = "record_removal"

# The storage workers' tasks (theirs to implement, ours to register when absent)
BACKUP: Final = "backup"
REMOVE: Final = "remove"
VERIFY: Final = "verify"
RESTORE: Final = "restore"
STORAGE_TASKS: Final = frozenset({BACKUP, REMOVE, VERIFY, RESTORE})

# Failure notifications (docs/notifications.md): one backtor_notify per notice,
# correlationId = the notice's idempotency key; its one task is Backtor's own.
BACKTOR_NOTIFY: Final = "backtor_notify"
DELIVER_NOTICE: Final = "deliver_notice"
