"""Experiments: typed YAML configs, the resumable grid runner, the report, and the baselines the paper compares
against. Built on every layer below."""
