"""Request and response bodies of the HTTP API, with their limits (they appear in the OpenAPI schema at /docs).

Limits keep one request's cost bounded: at most ``MAX_INPUTS`` texts of ``MAX_INPUT_CHARS`` characters each (the
engine also truncates each input to the server's ``max_input_tokens`` tokens, keeping the end), and at most
``MAX_NEW_TOKENS`` generated tokens. Anything outside them is a 422 with the offending field named.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from softprompt.server.engine import NAME_PATTERN

MAX_INPUTS = 64
MAX_INPUT_CHARS = 4000
MAX_NEW_TOKENS = 128

TaskName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64, description="a served task (GET /v1/tasks)",
                                examples=["sst2"])]
InputText = Annotated[str, Field(max_length=MAX_INPUT_CHARS, description="one raw input text")]
Inputs = Annotated[list[InputText], Field(min_length=1, max_length=MAX_INPUTS,
                                          description=f"1 to {MAX_INPUTS} input texts")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyRequest(_Strict):
    """Rank classification: every label's target text is scored after the task's prompt."""

    task: TaskName
    inputs: Inputs


class Classification(BaseModel):
    input: str
    label: str = Field(description="the predicted label (the verbalizer key); an ensemble's majority vote")
    text: str = Field(description="the predicted label's target text")
    scores: dict[str, float] = Field(description="log-likelihood of each label's target text (an ensemble: the "
                                                 "mean over its prompts)")
    votes: dict[str, int] = Field(description="label → number of the task's prompts that chose it")


class ClassifyResponse(BaseModel):
    task: str
    results: list[Classification]


class GenerateRequest(_Strict):
    """Greedy generation after the task's prompt."""

    task: TaskName
    inputs: Inputs
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS)


class Generation(BaseModel):
    input: str
    text: str = Field(description="the generated text (an ensemble: the most common output of its prompts)")


class GenerateResponse(BaseModel):
    task: str
    results: list[Generation]


class TaskInfo(BaseModel):
    name: str
    kind: Literal["classification", "generation"]
    prompts: int = Field(description="number of prompts (more than 1: an ensemble answered by majority vote)")
    prompt_lengths: list[int]
    labels: list[str]
    source_task: str = Field(description="the task the prompt was trained on (its metadata)")
    base_model: str


class TaskList(BaseModel):
    model: str
    prefix_cache: bool = Field(description="whether prompts run from cached keys/values (decoder-only models)")
    tasks: list[TaskInfo]


class Health(BaseModel):
    status: Literal["ok"]
    tasks: int


class Deleted(BaseModel):
    deleted: str


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, in one line")
    errors: list[dict] | None = Field(None, description="422 only: each invalid field (loc, msg, type)")
