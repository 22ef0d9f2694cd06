"""The HTTP API: ``create_app(engine, config)`` builds a FastAPI app around an :class:`Engine`.

Routes: ``POST /v1/classify``, ``POST /v1/generate``, ``GET /v1/tasks``, admin ``PUT``/``DELETE /v1/prompts/{name}``
(bearer token), ``GET /health``, ``GET /metrics`` (Prometheus text), OpenAPI at ``/docs`` and ``/openapi.json``.
Every client mistake is a 4xx naming the problem; a full queue is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from softprompt.prompted import NoContextError
from softprompt.promptfile import PromptFileError
from softprompt.server.batcher import Batcher, Overloaded
from softprompt.server.engine import NAME_PATTERN, Engine, Job, ServedTask, TaskError
from softprompt.server.metrics import ServerMetrics
from softprompt.server.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    Deleted,
    ErrorBody,
    GenerateRequest,
    GenerateResponse,
    Health,
    TaskInfo,
    TaskList,
)

# A prompt of P=100 on a 4096-wide model is 1.6 MB; 16 MiB leaves room for long prompts without inviting abuse.
DEFAULT_MAX_UPLOAD_BYTES = 16 * 2**20


class ConfigError(ValueError):
    """A server configuration that must not start (e.g. admin endpoints without a token)."""


@dataclass(frozen=True)
class ServerConfig:
    """How the server batches and who may change its prompts."""

    admin: bool = False  # enable PUT/DELETE /v1/prompts (needs admin_token)
    admin_token: str | None = None
    max_batch_rows: int = 64  # rows (inputs x choices x prompts) gathered into one forward
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue_rows: int = 8192  # beyond this, new requests get 503
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    def __post_init__(self) -> None:
        if self.admin and not self.admin_token:
            raise ConfigError("admin endpoints are enabled but no admin token was given (--admin-token or "
                              "SOFTPROMPT_ADMIN_TOKEN)")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ConfigError("the admin token must be at least 8 characters")
        if self.max_batch_rows < 1 or self.max_wait_ms < 0 or self.max_queue_rows < 1 or self.max_upload_bytes < 1:
            raise ConfigError(f"invalid batching limits: {self}")


def task_info(task: ServedTask) -> TaskInfo:
    return TaskInfo(name=task.name, kind=task.kind, prompts=len(task.members),
                    prompt_lengths=[int(m.prompt.shape[0]) for m in task.members], labels=list(task.labels),
                    source_task=task.source_task, base_model=task.base_model)


ERRORS = {400: {"model": ErrorBody, "description": "unparseable body"},
          404: {"model": ErrorBody, "description": "unknown task"},
          422: {"model": ErrorBody, "description": "invalid request"},
          503: {"model": ErrorBody, "description": "not ready or queue full; retry later"}}
TaskNamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64, description="task name")]
ADMIN_ERRORS = {401: {"model": ErrorBody, "description": "no bearer token"},
                403: {"model": ErrorBody, "description": "wrong token, or admin endpoints disabled"}}


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    """The app; the batcher starts and stops with the app's lifespan."""
    config = config or ServerConfig()
    metrics = ServerMetrics()
    batcher = Batcher(engine, metrics, max_batch_rows=config.max_batch_rows, max_wait_ms=config.max_wait_ms,
                      max_queue_rows=config.max_queue_rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        metrics.tasks.set(len(engine.tasks))
        yield
        await batcher.stop()

    app = FastAPI(title="softprompt", version="1", lifespan=lifespan,
                  description="Multi-task serving of soft prompts over one frozen model: requests for different "
                              "tasks share forwards, each row with its own prompt.")
    app.state.engine, app.state.batcher, app.state.metrics, app.state.config = engine, batcher, metrics, config

    @app.middleware("http")
    async def count(request: Request, call_next):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "other")  # the template: /v1/prompts/{name}
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # One readable line in ``detail`` (the same shape as every other error), the structured list in ``errors``
        # without the offending input echoed back (it may be 64 x 4000 characters).
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()]
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return JSONResponse(jsonable_encoder({"detail": detail, "errors": errors}), status_code=422)

    @app.exception_handler(NoContextError)
    async def no_context(request: Request, err: NoContextError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    def served(name: str) -> ServedTask:
        try:
            return engine.get(name)
        except KeyError as err:
            raise HTTPException(404, err.args[0]) from None

    def admin(authorization: Annotated[str | None, Header(description="Bearer TOKEN")] = None) -> None:
        if not config.admin:
            raise HTTPException(403, "admin endpoints are disabled (start the server with --admin-token)")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.encode(), (config.admin_token or "").encode()):
            raise HTTPException(403, "wrong admin token")

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS, tags=["inference"])
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        """Label each input with the task's prompt(s) by rank classification."""
        task = served(req.task)
        if task.kind != "classification":
            raise HTTPException(422, f"task {task.name!r} has no labels (no verbalizer); use /v1/generate")
        job = await batcher.submit(Job("classify", task, list(req.inputs)))
        return ClassifyResponse(task=task.name, results=job.result)

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS, tags=["inference"])
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """Greedy generation after the task's prompt(s)."""
        task = served(req.task)
        job = await batcher.submit(Job("generate", task, list(req.inputs), max_new_tokens=req.max_new_tokens))
        return GenerateResponse(task=task.name, results=job.result)

    @app.get("/v1/tasks", response_model=TaskList, tags=["tasks"])
    async def tasks() -> TaskList:
        return TaskList(model=engine.backbone.name, prefix_cache=engine.prefix_cache,
                        tasks=[task_info(t) for _, t in sorted(engine.tasks.items())])

    @app.put("/v1/prompts/{name}", response_model=TaskInfo, status_code=201, tags=["admin"],
             responses={**ADMIN_ERRORS, 200: {"model": TaskInfo, "description": "replaced a served task"},
                        413: {"model": ErrorBody, "description": "upload too large"},
                        422: {"model": ErrorBody, "description": "not a usable prompt file for this model"}},
             dependencies=[Depends(admin)],
             openapi_extra={"requestBody": {"required": True, "description": "a prompt file (.safetensors)",
                                            "content": {"application/octet-stream": {
                                                "schema": {"type": "string", "format": "binary"}}}}})
    async def put_prompt(request: Request, response: Response, name: TaskNamePath) -> TaskInfo:
        """Load (or replace) task NAME from a prompt file in the body; requests already queued keep their prompt."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > config.max_upload_bytes:
            raise HTTPException(413, f"upload of {declared} bytes exceeds the limit of {config.max_upload_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_upload_bytes:
                raise HTTPException(413, f"upload exceeds the limit of {config.max_upload_bytes} bytes")
        if not body:
            raise HTTPException(422, "empty body: send a prompt file (.safetensors) as the request body")
        try:
            task = await batcher.call(engine.task_from_bytes, name, bytes(body))
        except (PromptFileError, TaskError) as err:
            raise HTTPException(422, str(err)) from None
        if engine.add(task):
            response.status_code = status.HTTP_200_OK
        metrics.tasks.set(len(engine.tasks))
        return task_info(task)

    @app.delete("/v1/prompts/{name}", response_model=Deleted, tags=["admin"],
                responses={**ADMIN_ERRORS, 404: {"model": ErrorBody, "description": "unknown task"},
                           422: {"model": ErrorBody, "description": "invalid task name"}},
                dependencies=[Depends(admin)])
    async def delete_prompt(name: TaskNamePath) -> Deleted:
        """Stop serving task NAME; requests already queued for it are still answered."""
        if not engine.remove(name):
            raise HTTPException(404, f"unknown task {name!r}")
        metrics.tasks.set(len(engine.tasks))
        return Deleted(deleted=name)

    @app.get("/health", response_model=Health, responses={503: {"model": ErrorBody}}, tags=["ops"])
    async def health() -> Health:
        """200 once the model is loaded and the batcher runs."""
        if not batcher.running:
            raise HTTPException(503, "not ready")
        return Health(status="ok", tasks=len(engine.tasks))

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
