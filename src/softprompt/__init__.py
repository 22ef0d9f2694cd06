"""softprompt: prompt tuning (Lester, Al-Rfou & Constant, 2021) for frozen Hugging Face language models.

The public API. The package is layered (each folder imports only the ones before it):
``core`` (backbone, prompt bank, the splice, the prompted model, prompt files) → ``tasks`` → ``evaluation`` →
``training`` → ``experiments`` → ``server`` / ``cli``. The names below are what the README and the docs use; the
training, evaluation and server names load on first use, so ``import softprompt`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from softprompt.core.backbone import Backbone, load_backbone, make_backbone
from softprompt.core.bank import PromptBank
from softprompt.core.prompted import PromptedModel
from softprompt.core.promptfile import PromptFile, PromptFileError, PromptMeta, load_prompt, save_prompt
from softprompt.core.splice import splice

if TYPE_CHECKING:
    from softprompt.evaluation.ensemble import Ensemble
    from softprompt.evaluation.scoring import evaluate, predict
    from softprompt.server.app import create_app
    from softprompt.server.engine import Engine
    from softprompt.tasks import get_task
    from softprompt.training.prompt_tuning import TrainConfig, train_prompt

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (PEP 562), because the server pulls in FastAPI
# and the evaluation/training layers pull in every task.
_LAZY = {
    "Ensemble": "softprompt.evaluation.ensemble",
    "evaluate": "softprompt.evaluation.scoring",
    "predict": "softprompt.evaluation.scoring",
    "get_task": "softprompt.tasks",
    "TrainConfig": "softprompt.training.prompt_tuning",
    "train_prompt": "softprompt.training.prompt_tuning",
    "Engine": "softprompt.server.engine",
    "create_app": "softprompt.server.app",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'softprompt' has no attribute {name!r}")


__all__ = [
    "Backbone",
    "Engine",
    "Ensemble",
    "PromptBank",
    "PromptFile",
    "PromptFileError",
    "PromptMeta",
    "PromptedModel",
    "TrainConfig",
    "create_app",
    "evaluate",
    "get_task",
    "load_backbone",
    "load_prompt",
    "make_backbone",
    "predict",
    "save_prompt",
    "splice",
    "train_prompt",
]
