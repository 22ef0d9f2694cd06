"""Request and response bodies of the HTTP API, with their limits (they appear in the OpenAPI schema at /docs).

Limits keep one request's cost bounded: at most ``MAX_INPUTS`` texts of ``MAX_INPUT_CHARS`` characters each (the
engine also truncates each input to the server's ``max_input_tokens`` tokens, keeping the end), at most
``MAX_CHOICES`` choices of ``MAX_CHOICE_CHARS`` characters, at most ``MAX_NEW_TOKENS`` generated tokens, and
bodies of at most ``MAX_BODY_BYTES``. Anything outside them is a 422 with the offending field named (400 in OpenAI's
error shape on the OpenAI-compatible routes).

The OpenAI-compatible bodies (:class:`CompletionRequest` and the rest) follow OpenAI's legacy completions API. This
server decodes greedily, one answer per prompt: a field it cannot honour accepts only its no-op value (e.g.
``temperature`` 0 or null, ``n`` 1), so the schema itself says what is refused, and :data:`UNSUPPORTED` says why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from softprompt.server.engine import MAX_NEW_TOKENS, NAME_PATTERN

MAX_INPUTS = 64
MAX_INPUT_CHARS = 4000
MAX_CHOICES = 16
MAX_CHOICE_CHARS = 1000
MAX_STOPS = 4  # as OpenAI
# A full request within the limits above is well under this (64 x 4,000 characters of inputs, or of prompts).
MAX_BODY_BYTES = 4 * 2**20

TaskName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64, description="a served task (GET /v1/tasks)",
                                examples=["sst2"])]
InputText = Annotated[str, Field(max_length=MAX_INPUT_CHARS, description="one raw input text")]
Inputs = Annotated[list[InputText], Field(min_length=1, max_length=MAX_INPUTS,
                                          description=f"1 to {MAX_INPUTS} input texts")]


def _integral(value: object) -> object:
    # JSON Schema counts 1.0 as an integer; pydantic's strict int would not.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _false(value: bool) -> bool:
    if value:
        raise ValueError("only false is supported")
    return value


# Limits before the validator, or pydantic cannot write them into the JSON schema.
JsonInt = Annotated[int, BeforeValidator(_integral)]
NewTokens = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS), BeforeValidator(_integral)]
OnlyOne = Annotated[int, Field(ge=1, le=1), BeforeValidator(_integral)]
OnlyFalse = Annotated[bool, Field(json_schema_extra={"const": False}), AfterValidator(_false)]


class _Strict(BaseModel):
    # Strict: a value of another JSON type is refused as the schema says (no false for 0, no "5" for 5).
    model_config = ConfigDict(extra="forbid", strict=True)


ChoiceText = Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]
Choices = Annotated[list[ChoiceText], Field(min_length=2, max_length=MAX_CHOICES)]


class ClassifyRequest(_Strict):
    """Rank classification: every label's target text is scored after the task's prompt; or, with ``choices``,
    every given candidate text (multiple choice, e.g. COPA's alternatives)."""

    task: TaskName
    inputs: Inputs
    choices: Choices | None = Field(
        None, description=f"candidate target texts scored for every input instead of the task's labels, taken as "
                          f"given (include the leading space the task was trained with); 2 to {MAX_CHOICES}. "
                          "Results are labelled by index: \"0\", \"1\", ...",
        examples=[[" The sun rose.", " The grass was wet."]])

    def per_input_choices(self) -> list[tuple[str, ...]] | None:
        return None if self.choices is None else [tuple(self.choices)] * len(self.inputs)


class Classification(BaseModel):
    input: str
    label: str = Field(description="the predicted label (the verbalizer key, or the index of the chosen choice); "
                                   "an ensemble's majority vote")
    text: str = Field(description="the predicted label's target text (or the chosen choice), stripped")
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
    max_new_tokens: NewTokens = 32


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
    template: str = Field(description="how each input is formatted: its one {field} is the input text")
    instruction: str = Field(description="text before the formatted input")
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


# ---- OpenAI-compatible completions --------------------------------------------------------------------------------
PromptText = Annotated[str, Field(max_length=MAX_INPUT_CHARS)]
StopText = Annotated[str, Field(min_length=1, max_length=100)]

# Why each field that accepts only its no-op value refuses the others (the 400's message).
UNSUPPORTED = {
    "temperature": "only greedy decoding is served: temperature must be 0 or null",
    "top_p": "only greedy decoding is served: top_p must be 1 or null",
    "n": "one completion per prompt: n must be 1 or null",
    "best_of": "one completion per prompt: best_of must be 1 or null",
    "echo": "echo is not supported: it must be false or null",
    "stream": "streaming is not supported: stream must be false or null",
    "stream_options": "streaming is not supported: stream_options must be null",
    "logprobs": "logprobs are not returned: logprobs must be null",
    "suffix": "suffix (insertion) is not supported: it must be null or empty",
    "presence_penalty": "penalties are not supported: presence_penalty must be 0 or null",
    "frequency_penalty": "penalties are not supported: frequency_penalty must be 0 or null",
    "logit_bias": "logit_bias is not supported: it must be null or {}",
    "prompt": f"prompt must be a string or a list of 1 to {MAX_INPUTS} strings of at most {MAX_INPUT_CHARS} "
              "characters (token ids are not supported)",
}


class CompletionRequest(_Strict):
    """OpenAI's ``POST /v1/completions`` body. ``model`` names a served task (as vLLM names LoRA adapters):
    a classification task answers with its predicted label's text, a generation task generates greedily."""

    model: TaskName
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=MAX_INPUTS)]
    max_tokens: NewTokens | None = Field(16,
                                   description="generation tasks: new tokens at most (null: 16, OpenAI's default)")
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOPS)] | None = Field(
        None, description="the text is cut before the first occurrence of any of these")
    n: OnlyOne | None = None
    best_of: OnlyOne | None = None
    echo: OnlyFalse | None = None
    stream: OnlyFalse | None = None
    stream_options: None = None
    logprobs: None = None
    suffix: Literal[""] | None = None
    temperature: float | None = Field(None, ge=0, le=0)
    top_p: float | None = Field(None, ge=1, le=1)
    presence_penalty: float | None = Field(None, ge=0, le=0)
    frequency_penalty: float | None = Field(None, ge=0, le=0)
    logit_bias: dict[str, int] | None = Field(None, max_length=0)
    seed: JsonInt | None = Field(None, description="accepted; greedy decoding answers the same for every seed")
    user: str | None = Field(None, max_length=256, description="accepted and ignored")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] = Field(
        description="length: a generation reached max_tokens (read from the output's token count); stop otherwise")


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="tokens of the formatted inputs (the soft prompt not counted)")
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class ModelCard(BaseModel):
    id: str = Field(description="a served task")
    object: Literal["model"] = "model"
    created: int = Field(description="when the task was loaded (Unix seconds)")
    owned_by: str = "softprompt"
    root: str = Field(description="the frozen model every task runs on")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, or server_error for 503")
    param: str | None = Field(None, description="the offending request field")
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
