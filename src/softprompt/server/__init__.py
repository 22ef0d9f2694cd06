"""Multi-task serving: one frozen model, many prompts, requests of different tasks batched into shared forwards.

Modules: :mod:`~softprompt.server.engine` (tasks and batched forwards over the library's
:class:`~softprompt.core.prompted.PromptedModel`, prefix cache included), :mod:`~softprompt.server.batcher` (dynamic
batching on one worker thread), :mod:`~softprompt.server.app` (the FastAPI app), :mod:`~softprompt.server.schemas`,
:mod:`~softprompt.server.metrics`, :mod:`~softprompt.server.client` (a Python client). See docs/serving.md.
"""

from softprompt.server.app import ServerConfig, create_app
from softprompt.server.engine import Engine

__all__ = ["Engine", "ServerConfig", "create_app"]
