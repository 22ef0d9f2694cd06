"""Scoring tuned prompts: rank classification, generation, ensembles of prompts, nearest-token neighbours.
Built on core/ and tasks/."""
