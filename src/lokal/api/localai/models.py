"""LocalAI's model-management routes, as LocalAI clients call them.

`POST /models/apply` (`id` = `gallery@name` or a name, or `url`/`config_url`, plus
`name`, `overrides`, `files`, lokal's `force`) answers `{uuid, status}` where status
is the URL to poll; `GET /models/jobs/{uuid}` answers LocalAI's job status
(`processed`, `message`, `progress`, `file_name`, `file_size`, `downloaded_size`,
`error`); `GET /models/jobs` all jobs by uuid; `POST /models/jobs/{uuid}/cancel` (and
`DELETE /models/jobs/{uuid}`) cancels; `GET /models/available` lists gallery entries
with `installed`; `POST /models/delete/{name}` deletes. Every route is an admin
route (`lokal.api.admin.require_admin`). The work is `lokal.install.manager`'s.

Unlike LocalAI, errors found while planning (unknown entry: 404 with close matches,
malformed reference or unsafe name: 400, existing model: 409, disk full: 507) are
the answer to the apply call itself; errors found later are in the job's `error`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from lokal.api.admin import require_admin
from lokal.errors import BadRequest
from lokal.install.manager import InstallManager

router = APIRouter(dependencies=[Depends(require_admin)], tags=["LocalAI models"])

#: How long /models/apply waits for planning before answering with the job alone.
PLAN_WAIT = 30.0


class ApplyFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    filename: str
    uri: str
    sha256: str | None = None


class ApplyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    url: str | None = None
    config_url: str | None = None
    name: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    files: list[ApplyFile] = Field(default_factory=list)
    force: bool = False
    #: one build of an entry that declares `variants` (LocalAI's field); default: the entry
    variant: str | None = None


def installer(request: Request) -> InstallManager:
    return request.app.state.installer


def _status_url(request: Request, uuid: str) -> str:
    return str(request.url_for("model_job", uuid=uuid))


@router.post("/models/apply")
async def apply(body: ApplyRequest, request: Request) -> dict[str, Any]:
    ref = body.id or body.url or body.config_url
    if not ref:
        raise BadRequest("give `id` (a gallery entry, GALLERY@NAME or a reference) or `url` / "
                         "`config_url` (a model config)", param="id")
    manager = installer(request)
    job = manager.start(ref, name=body.name, force=body.force, overrides=body.overrides,
                        files=[f.model_dump(exclude_none=True) for f in body.files], variant=body.variant)
    await job.planned(timeout=PLAN_WAIT)
    return {"uuid": job.uuid, "status": _status_url(request, job.uuid)}


@router.get("/models/jobs/{uuid}", name="model_job")
async def job_status(uuid: str, request: Request) -> dict[str, Any]:
    return installer(request).get(uuid).status_dict()


@router.get("/models/jobs")
async def jobs(request: Request) -> dict[str, Any]:
    return {uuid: job.status_dict() for uuid, job in installer(request).jobs.items()}


@router.post("/models/jobs/{uuid}/cancel")
@router.delete("/models/jobs/{uuid}")
async def cancel(uuid: str, request: Request) -> dict[str, Any]:
    job = installer(request).get(uuid)
    if job.cancel():
        await job.wait()
    return job.status_dict()


@router.get("/models/available")
async def available(request: Request) -> list[dict[str, Any]]:
    import asyncio

    manager = installer(request)
    entries = await asyncio.to_thread(manager.galleries.entries)
    installed = manager.installed_names()
    return [e.as_available(e.name in installed) for e in entries]


@router.get("/models/galleries")
async def galleries(request: Request) -> list[dict[str, str]]:
    return [{"name": s.name, "url": s.url} for s in installer(request).galleries.sources]


@router.post("/models/delete/{name:path}")
async def delete(name: str, request: Request) -> dict[str, Any]:
    import asyncio

    job = await asyncio.to_thread(installer(request).remove, name)
    out = {"uuid": job.uuid, "status": _status_url(request, job.uuid)}
    out.update(removed=job.removed, kept=job.kept)
    return out
