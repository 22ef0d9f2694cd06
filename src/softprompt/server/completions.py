"""OpenAI-compatible routes: ``POST /v1/completions``, ``GET /v1/models`` and ``GET /v1/models/{model}``.

``model`` names a served task, the way vLLM serves LoRA adapters under their own names, so OpenAI clients work
unchanged: a classification task answers with its predicted label's text, a generation task generates greedily.
Both run on the same batcher as the native routes. Errors on these routes have OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) and a field the server cannot honour is a 400 naming it (see
:data:`softprompt.server.schemas.UNSUPPORTED`): nothing is silently ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.responses import JSONResponse

from softprompt.server.batcher import Batcher
from softprompt.server.engine import NAME_PATTERN, Engine, Job, ServedTask
from softprompt.server.schemas import (
    UNSUPPORTED,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    ModelCard,
    ModelList,
    OpenAIErrorBody,
)

OPENAI_PREFIXES = ("/v1/completions", "/v1/models")
DEFAULT_MAX_TOKENS = 16  # OpenAI's, for max_tokens null
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorBody, "description": "invalid or unsupported field (``param`` names it)"},
    404: {"model": OpenAIErrorBody, "description": "unknown model (task)"},
    413: {"model": OpenAIErrorBody, "description": "body too large"},
    503: {"model": OpenAIErrorBody, "description": "not ready or queue full; retry later"},
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(errors: Sequence[dict]) -> JSONResponse:
    """A request that failed the schema, as OpenAI answers it: 400, the first offending field in ``param``."""
    first = errors[0] if errors else {}
    loc = [x for x in first.get("loc", ()) if x != "body"]
    param = loc[0] if loc and isinstance(loc[0], str) else None  # an int: a position in unparseable JSON
    if first.get("type") == "extra_forbidden":
        message = f"unsupported field {param!r}: this server does not accept it"
    elif first.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    elif param in UNSUPPORTED:
        message = f"{param}: {UNSUPPORTED[param]}"
    else:
        message = f"{'.'.join(str(x) for x in loc) or 'body'}: {first.get('msg', 'invalid request')}"
    return error_response(400, message, param=param)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string (excluded), and whether one occurred."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def add_completion_routes(app: FastAPI, engine: Engine, batcher: Batcher,
                          count_tokens: Callable[[str, bool], int]) -> None:
    """Register the OpenAI-compatible routes. ``count_tokens(text, special)`` counts tokens for ``usage`` (a
    tokenizer of the HTTP side's own: the worker's is busy on another thread)."""

    def served(name: str) -> ServedTask:
        task = engine.tasks.get(name)
        if task is None:
            serving = ", ".join(sorted(engine.tasks)) or "none"
            raise OpenAIError(404, f"model {name!r} does not exist; serving: {serving}", param="model",
                              code="model_not_found")
        return task

    def card(task: ServedTask) -> ModelCard:
        return ModelCard(id=task.name, created=task.loaded_at, root=engine.backbone.name)

    @app.post("/v1/completions", response_model=Completion, responses=OPENAI_ERRORS, tags=["openai"])
    async def completions(req: CompletionRequest) -> Completion:
        """OpenAI's completions API over the served tasks (greedy, one choice per prompt)."""
        task = served(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or ())
        max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
        if task.kind == "classification":
            job = await batcher.submit(Job("classify", task, prompts))
        else:
            job = await batcher.submit(Job("generate", task, prompts, max_new_tokens=max_tokens))
        choices, completion_tokens = [], 0
        for i, result in enumerate(job.result):
            text, stopped = cut_at_stop(result["text"], stops)
            tokens = count_tokens(text, False)
            completion_tokens += tokens
            # The engine returns text, not token ids: a generation that used all max_tokens reads as one whose
            # text is that long (outer whitespace, which the engine strips, can hide a token or two).
            length = task.kind == "generation" and not stopped and tokens >= max_tokens
            choices.append(CompletionChoice(text=text, index=i, finish_reason="length" if length else "stop"))
        prompt_tokens = sum(count_tokens(task.format(p), True) for p in prompts)
        return Completion(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=task.name,
                          choices=choices, usage=CompletionUsage(prompt_tokens=prompt_tokens,
                                                                 completion_tokens=completion_tokens,
                                                                 total_tokens=prompt_tokens + completion_tokens))

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def models() -> ModelList:
        """The served tasks, as OpenAI models."""
        return ModelList(data=[card(t) for _, t in sorted(engine.tasks.items())])

    @app.get("/v1/models/{model}", response_model=ModelCard, responses=OPENAI_ERRORS, tags=["openai"])
    async def model(model: Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]) -> ModelCard:
        return card(served(model))
