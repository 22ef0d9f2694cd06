"""The paper's baselines beside prompt tuning: model tuning, prompt design, and LM adaptation of the backbone."""
