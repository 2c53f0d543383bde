"""autoPauseAfterFailures, judged from the records after every commit (knob of issue 12).

The model counts each spec's consecutive failures from the backup rows as they appear: a
no-data record (FAILED or TIMED_OUT, no backup task) is one more failure (not a run that
overlapPolicy terminateOther ended on purpose), a backup task's
data recorded (a new COMPLETED record, or a failed run retried into one) sets the count to
0, and so does the spec being enabled again. After every commit the spec's stored
`consecutive_failures` must equal the model's, an enabled spec must stay below its
threshold, and a spec that paused itself must have reached it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from backtor.core.schedule import TERMINATED_BY_OVERLAP
from backtor.db.models import Backup, BackupSpec, BackupStatus

if TYPE_CHECKING:
    from tests.simulation.world import World

AUTO_PAUSED = "auto-paused after "
_FAILED = (BackupStatus.FAILED.value, BackupStatus.TIMED_OUT.value)
_SPECS = select(
    BackupSpec.id,
    BackupSpec.name,
    BackupSpec.enabled,
    BackupSpec.deleting,
    BackupSpec.consecutive_failures,
    BackupSpec.auto_pause_after_failures,
    BackupSpec.paused_reason,
)
_ROWS = select(Backup.id, Backup.spec_id, Backup.status, Backup.backup_task_id, Backup.last_error)


@dataclass
class SpecCount:
    enabled: bool
    expected: int = 0
    failed_seen: set[int] = field(default_factory=set)
    taken_seen: set[str] = field(default_factory=set)


@dataclass
class PauseModel:
    specs: dict[str, SpecCount] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    pauses: int = 0

    def observe(self, world: World) -> None:
        with world.db.read() as connection:
            specs = connection.execute(_SPECS).all()
            rows = connection.execute(_ROWS).all()
        by_spec: dict[int, list[tuple[int, str, str | None]]] = {}
        for row in rows:
            status = row.status
            if TERMINATED_BY_OVERLAP in (row.last_error or ""):
                status = "TERMINATED_BY_OVERLAP"  # not a failure of the backup
            by_spec.setdefault(row.spec_id, []).append((row.id, status, row.backup_task_id))
        present = set()
        for spec in specs:
            present.add(spec.name)
            state = self.specs.get(spec.name)
            if state is None:
                state = self.specs[spec.name] = SpecCount(enabled=spec.enabled)
            self._follow(world, spec, state, by_spec.get(spec.id, []))
        for name in set(self.specs) - present:  # deleted: a new spec of that name starts at 0
            del self.specs[name]

    def _follow(
        self,
        world: World,
        spec: Any,
        state: SpecCount,
        rows: list[tuple[int, str, str | None]],
    ) -> None:
        name = spec.name
        enabled = bool(spec.enabled)
        threshold = int(spec.auto_pause_after_failures)
        count = int(spec.consecutive_failures)
        reason = spec.paused_reason
        deleting = bool(spec.deleting)
        failures = [
            backup_id
            for backup_id, status, task in rows
            if task is None and status in _FAILED and backup_id not in state.failed_seen
        ]
        taken = [task for _, _, task in rows if task is not None and task not in state.taken_seen]
        state.failed_seen.update(failures)
        state.taken_seen.update(taken)
        if taken:
            state.expected = 0
        else:
            state.expected += len(failures)
        if enabled and not state.enabled:
            state.expected = 0  # enabled again (a PUT): counting starts afresh
        at = f"{world.clock.now_ms / 1000:.3f}s"
        if count != state.expected:
            self.violations.append(
                f"[9 auto-pause] {name} at {at}: consecutive_failures is {count}, the records "
                f"say {state.expected} failed backups in a row"
            )
            state.expected = count  # one report per divergence
        paused_now = state.enabled and not enabled and (reason or "").startswith(AUTO_PAUSED)
        if paused_now:
            self.pauses += 1
            if threshold <= 0 or count < threshold:
                self.violations.append(
                    f"[9 auto-pause] {name} at {at}: paused itself after {count} failures, "
                    f"autoPauseAfterFailures is {threshold}"
                )
            elif not reason.startswith(f"{AUTO_PAUSED}{count} "):
                self.violations.append(
                    f"[9 auto-pause] {name} at {at}: pausedReason {reason!r} does not say {count}"
                )
        if enabled and not deleting and 0 < threshold <= count:
            self.violations.append(
                f"[9 auto-pause] {name} at {at}: {count} failures in a row, "
                f"autoPauseAfterFailures {threshold}, and still enabled"
            )
        state.enabled = enabled
