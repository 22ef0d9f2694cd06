"""How one raw text becomes a model input: a task's ``str.format`` template with one field, after an instruction.

Shared by everything that formats a single text the way training formatted a record (``softprompt predict``, the
server), so a row served is the row trained: :func:`prompt_format` is the one place that turns a prompt file's
metadata (and its task) into a template, an instruction and a verbalizer. Templates come from prompt files, which
anyone may write: they are checked once (:func:`input_template`) and filled by splicing literal parts
(:func:`fill_template`), never evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from string import Formatter
from typing import Protocol

from softprompt.core.promptfile import PromptFileError, PromptMeta


class TaskFormat(Protocol):
    """What :func:`prompt_format` reads from a task (a :class:`~softprompt.tasks.base.Task`)."""

    text_template: str
    verbalizer: Mapping[str, str]


def input_template(template: str, where: str) -> str:
    """The template one text is served with: a ``str.format`` string whose one plain field (``{text}``, or the
    one field a data-file task's records filled) each request's input fills. A template of several fields (a record of
    several parts) cannot be filled from one text: its inputs arrive formatted, as for the built-in multi-field
    tasks, so it serves ``"{text}"``. A field expression, conversion, format spec or positional field is refused
    here, at load: the server must never evaluate anything a prompt file says."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise PromptFileError(f"{where}: metadata field 'template' is not a format string ({err})") from None
    fields = {f for f, _, _ in parsed}
    if not fields or any(not f.isidentifier() or spec or conv for f, spec, conv in parsed):
        raise PromptFileError(f"{where}: metadata field 'template' must name its input fields plainly (like "
                              f"{{text}}), got {template[:200]!r}")
    return template if len(fields) == 1 else "{text}"


def fill_template(template: str, text: str, instruction: str = "") -> str:
    """``instruction`` + ``template`` with its field(s) replaced by ``text``: what training's
    ``template.format(field=text)`` gave, without formatting (neither the text nor the template is evaluated)."""
    parts: list[str] = []
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(text)
    return instruction + "".join(parts)


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt's raw texts become inputs, and the labels it ranks them over (empty: a generation task)."""

    template: str  # checked by input_template: one field, "{text}" when nothing says otherwise
    instruction: str
    verbalizer: dict[str, str]

    def fill(self, text: str) -> str:
        return fill_template(self.template, text, self.instruction)


def prompt_format(meta: PromptMeta, task: TaskFormat | None, where: str, *, task_template: bool = False,
                  raw: bool = False) -> PromptFormat:
    """The format a prompt serves and predicts with: its own template and instruction (format 2 records them), else
    ``task``'s ``text_template``, else ``"{text}"``; its own verbalizer, else the task's.

    ``task_template``: the task's template over the recorded one (``softprompt predict --task``). ``raw``: every
    text as is (``"{text}"``, no instruction); the labels are still the prompt's. ``where`` names the file in errors.
    """
    recorded = "" if raw or task_template else meta.template
    fallback = "{text}" if raw or task is None else task.text_template
    return PromptFormat(template=input_template(recorded or fallback, where),
                        instruction="" if raw else meta.instruction,
                        verbalizer=dict(meta.verbalizer) or (dict(task.verbalizer) if task is not None else {}))
