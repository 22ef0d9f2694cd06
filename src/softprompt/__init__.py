"""softprompt: prompt tuning (Lester, Al-Rfou & Constant, 2021) for frozen Hugging Face language models."""

from softprompt.backbone import Backbone, load_backbone, make_backbone
from softprompt.bank import PromptBank
from softprompt.prompted import PromptedModel
from softprompt.promptfile import PromptFile, PromptFileError, PromptMeta, load_prompt, save_prompt
from softprompt.splice import splice

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "PromptBank",
    "PromptFile",
    "PromptFileError",
    "PromptMeta",
    "PromptedModel",
    "load_backbone",
    "load_prompt",
    "make_backbone",
    "save_prompt",
    "splice",
]
