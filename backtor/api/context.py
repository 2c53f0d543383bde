"""What the routes need from the process: the same Services the scheduler runs on.

The app factory stores one `Services` in `app.state.backtor`; routes get it, or a session
from it, through these dependencies.

Where a request's time goes (docs/performance.md, "API"): FastAPI runs every plain `def`
dependency and route in its thread pool, one hop each, and a generator dependency costs
two. So the dependencies that do no I/O are `async def` (they run on the event loop, no
hop), and the read routes take `ReadsDep` (no I/O either, once the schema was seen at
head) and connect inside the route itself: one hop per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from backtor.db.engine import Reads
from backtor.db.migrate import SchemaGate
from backtor.runtime.services import Services


class SchemaCheck:
    """The schema gate as the requests consult it, knowing without I/O when it is open.

    `check` and `forget` are the gate's (SchemaNotReady, a 503 naming the revisions, until
    the schema is at head; `forget` after a database error that may mean it changed).
    `at_head` says that the last check passed and nothing was forgotten since, so the
    request can skip the thread hop the check would otherwise need.
    """

    def __init__(self, gate: SchemaGate) -> None:
        self._gate = gate
        self._at_head = False

    @property
    def at_head(self) -> bool:
        return self._at_head

    def check(self) -> None:
        self._gate.check()
        self._at_head = True

    def forget(self) -> None:
        self._at_head = False
        self._gate.forget()


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.backtor
    return services


async def get_services(request: Request) -> Services:
    return services_of(request.app)


def schema_gate_of(app: FastAPI) -> SchemaCheck:
    gate: SchemaCheck = app.state.schema_gate
    return gate


def reads_of(app: FastAPI) -> Reads:
    reads: Reads = app.state.reads
    return reads


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; whatever was not committed is rolled back at the end.

    Only on a schema at head (SchemaNotReady, a 503 naming the revisions, otherwise): a
    missing table must not surface as "the database cannot be reached".
    """
    schema_gate_of(request.app).check()
    with services_of(request.app).db() as session:
        yield session


async def get_reads(request: Request) -> Reads:
    """Connections that only read (backtor.db.engine.Reads), once the schema is at head:
    the same check, at the same point of the request, as `get_session`.

    The route connects itself (`with reads.connect() as connection:`), in the one thread
    hop it runs in; nothing here touches the database once the schema was seen at head.
    """
    gate = schema_gate_of(request.app)
    if not gate.at_head:
        await run_in_threadpool(gate.check)
    return reads_of(request.app)


ServicesDep = Annotated[Services, Depends(get_services)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadsDep = Annotated[Reads, Depends(get_reads)]
