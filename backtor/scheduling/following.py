"""How the runs an outbox tracks ended: one look-up shared by removals and notices.

An outbox row knows the workflow it started. Each pass asks Conductor once for the open
runs of the rows' correlation ids, and only for a run that is not open does it fetch that
run alone: the common case (still running) costs one request for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from backtor.conductor.payloads import WorkflowRun, WorkflowStatus
from backtor.conductor.port import Conductor
from backtor.core.errors import ConductorNotFound, ConductorRefused, ConductorUnavailable

Row = TypeVar("Row")


def ended_runs(
    conductor: Conductor,
    workflow: str,
    rows: Sequence[Row],
    *,
    correlation_of: Callable[[Row], str],
    workflow_id_of: Callable[[Row], str],
    gone: str,
    unseen: Callable[[Row, Exception], None],
    still_open: Callable[[Row, WorkflowRun], None] | None = None,
) -> Iterator[tuple[Row, WorkflowRun]]:
    """Each row whose run has ended, with the run as it ended (without its tasks).

    A run Conductor no longer knows ended FAILED with the reason `gone`. A run Conductor
    cannot show now is reported to `unseen` and skipped: one must not hold up the others.
    A run still open goes to `still_open` (its summary, without tasks), when given.
    """
    correlations = sorted({correlation_of(row) for row in rows})
    open_runs = {
        run.workflow_id: run
        for runs in conductor.workflows_by_correlation(
            workflow, correlations, include_closed=False
        ).values()
        for run in runs
        if run.status.is_open
    }
    for row in rows:
        workflow_id = workflow_id_of(row)
        if workflow_id in open_runs:
            if still_open is not None:
                still_open(row, open_runs[workflow_id])
            continue
        try:
            run = conductor.get_workflow(workflow_id, include_tasks=False)
        except ConductorNotFound:
            run = WorkflowRun(workflow_id, workflow, WorkflowStatus.FAILED, reason=gone)
        except (ConductorUnavailable, ConductorRefused) as exc:
            unseen(row, exc)
            continue
        if not run.status.is_open:
            yield row, run
