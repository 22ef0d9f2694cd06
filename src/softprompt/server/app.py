"""The HTTP API: ``create_app(engine, config)`` builds a FastAPI app around an :class:`Engine`.

Routes: ``POST /v1/classify``, ``POST /v1/generate``, ``GET /v1/tasks``, admin ``PUT``/``DELETE /v1/prompts/{name}``
(bearer token), the OpenAI-compatible ``POST /v1/completions`` and ``GET /v1/models`` (:mod:`.completions`),
``GET /health``, ``GET /metrics`` (Prometheus text), OpenAPI at ``/docs`` and ``/openapi.json``.
Every client mistake is a 4xx naming the problem; a full queue is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import copy
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from softprompt.core.prompted import NoContextError
from softprompt.core.promptfile import PromptFileError
from softprompt.server import completions
from softprompt.server.batcher import Batcher, Overloaded
from softprompt.server.completions import OpenAIError, add_completion_routes, is_openai
from softprompt.server.engine import NAME_PATTERN, Engine, Job, ServedTask, TaskError
from softprompt.server.metrics import ServerMetrics
from softprompt.server.schemas import (
    MAX_BODY_BYTES,
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
    max_body_bytes: int = MAX_BODY_BYTES  # JSON bodies

    def __post_init__(self) -> None:
        if self.admin and not self.admin_token:
            raise ConfigError("admin endpoints are enabled but no admin token was given (--admin-token or "
                              "SOFTPROMPT_ADMIN_TOKEN)")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ConfigError("the admin token must be at least 8 characters")
        if (self.max_batch_rows < 1 or self.max_wait_ms < 0 or self.max_queue_rows < 1 or self.max_upload_bytes < 1
                or self.max_body_bytes < 1):
            raise ConfigError(f"invalid batching limits: {self}")


def task_info(task: ServedTask) -> TaskInfo:
    return TaskInfo(name=task.name, kind=task.kind, prompts=len(task.members),
                    prompt_lengths=[int(m.prompt.shape[0]) for m in task.members], labels=list(task.labels),
                    source_task=task.source_task, template=task.template, instruction=task.instruction,
                    base_model=task.base_model)


def error_response(path: str, status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the shape of the route's API: OpenAI's on the OpenAI-compatible routes, ``{"detail"}`` else."""
    if is_openai(path):
        return completions.error_response(status_code, message, headers=headers)
    return JSONResponse({"detail": message}, status_code=status_code, headers=headers)


class BodyLimit:
    """Refuses a body over its route's limit (uploads: ``max_upload_bytes``; JSON: ``max_body_bytes``) with 413
    before it is read in full: a declared ``content-length`` at once, a chunked body as soon as the bytes received
    pass the limit (the route's read of the body raises, which the app answers as a 413)."""

    def __init__(self, app: ASGIApp, *, upload_limit: int, json_limit: int) -> None:
        self.app, self.upload_limit, self.json_limit = app, upload_limit, json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.upload_limit if path.startswith("/v1/prompts/") else self.json_limit
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            message = f"a body of {int(declared)} bytes exceeds the limit of {limit}"
            await error_response(path, 413, message)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"the body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "unparseable body"},
    404: {"model": ErrorBody, "description": "unknown task"},
    413: {"model": ErrorBody, "description": "body too large"},
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
    # Added before the counting middleware, so it runs inside it and its 413s are counted too.
    app.add_middleware(BodyLimit, upload_limit=config.max_upload_bytes, json_limit=config.max_body_bytes)
    # The HTTP side's own tokenizer (choice checks, OpenAI usage counts): a fast tokenizer is not safe to use from
    # two threads at once, and the worker thread tokenizes every batch.
    tokenizer = copy.deepcopy(engine.backbone.tokenizer)

    def count_tokens(text: str, special: bool) -> int:
        return len(tokenizer(text, add_special_tokens=special)["input_ids"])

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
        if is_openai(request.url.path):
            return completions.validation_error(errors)
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
        return JSONResponse(jsonable_encoder({"detail": detail, "errors": errors}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if is_openai(request.url.path):
            return completions.error_response(err.status_code, str(err.detail), headers=err.headers)
        return await http_exception_handler(request, err)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, err: OpenAIError) -> JSONResponse:
        return completions.error_response(err.status, err.message, param=err.param, code=err.code)

    @app.exception_handler(NoContextError)
    async def no_context(request: Request, err: NoContextError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return error_response(request.url.path, 503, str(err), headers={"Retry-After": "1"})

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
        """Label each input with the task's prompt(s) by rank classification, over the task's labels or the
        request's own ``choices``."""
        task = served(req.task)
        choices = req.per_input_choices()
        if choices is None and task.kind != "classification":
            raise HTTPException(422, f"task {task.name!r} has no labels (no verbalizer): give choices, or use "
                                     "/v1/generate")
        for j, text in enumerate(req.choices or ()):
            if not count_tokens(text, False):  # a target of no tokens has no likelihood to rank
                raise HTTPException(422, f"choices[{j}] {text[:50]!r} is no tokens")
        job = await batcher.submit(Job("classify", task, list(req.inputs), choices=choices))
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
                        422: {"model": ErrorBody, "description": "not a usable prompt file for this model (the "
                                                                 "message names the metadata field)"}},
             dependencies=[Depends(admin)],
             openapi_extra={"requestBody": {"required": True, "description": "a prompt file (.safetensors)",
                                            "content": {"application/octet-stream": {
                                                "schema": {"type": "string", "format": "binary"}}}}})
    async def put_prompt(request: Request, response: Response, name: TaskNamePath) -> TaskInfo:
        """Load (or replace) task NAME from a prompt file in the body; requests already queued keep their prompt.
        The file is only ever read from the body: its metadata cannot make the server open another file."""
        body = await request.body()  # at most max_upload_bytes (BodyLimit)
        if not body:
            raise HTTPException(422, "empty body: send a prompt file (.safetensors) as the request body")
        try:
            task = await batcher.call(engine.task_from_bytes, name, body)
        except (PromptFileError, TaskError) as err:  # PromptFileError: every malformed field, named
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

    add_completion_routes(app, engine, batcher, count_tokens)

    def openapi() -> dict[str, Any]:
        # FastAPI documents a 422 for every body; the OpenAI-compatible routes answer invalid bodies with 400.
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path, ops in spec["paths"].items():
                for op in ops.values() if is_openai(path) else ():
                    op["responses"].pop("422", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
