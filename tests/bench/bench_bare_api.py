"""A bare FastAPI app whose POST /notes does what the generated one does: one `kiq`.

`uvicorn bench_bare_api:app`, with bench_bare's environment (BENCH_BROKER, BENCH_QUEUE, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench_bare import broker, create_note
from fastapi import FastAPI, status
from pydantic import BaseModel, Field


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    await broker.startup()
    yield
    await broker.shutdown()


app = FastAPI(lifespan=lifespan)


class NoteCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=10_000)


class TaskAccepted(BaseModel):
    task_id: str


@app.post("/notes", status_code=status.HTTP_202_ACCEPTED)
async def create(payload: NoteCreate) -> TaskAccepted:
    task = await create_note.kiq(payload.title, payload.body)
    return TaskAccepted(task_id=task.task_id)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
