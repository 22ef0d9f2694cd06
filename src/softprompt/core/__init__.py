"""The prompt mechanism: a frozen backbone, a bank of soft prompts, the one splice that prepends them, and the
prompt file that stores one. Imports nothing above it."""
