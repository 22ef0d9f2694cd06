"""A small Python client for the softprompt server.

    >>> from softprompt.server.client import Client
    >>> with Client("http://127.0.0.1:8000") as c:
    ...     c.classify("sst2", ["a gorgeous, witty film"])[0]["label"]

Errors raise :class:`ServerError` carrying the HTTP status and the server's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx


class ServerError(RuntimeError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Client:
    """Wraps an ``httpx.Client``; pass ``http=`` to use another (e.g. Starlette's TestClient in tests)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 60.0,
                 http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._owned = http is None
        self.token = token

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self.http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(response.status_code, str(detail))
        return response.json()

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def health(self) -> dict:
        return self._check(self.http.get("/health"))

    def tasks(self) -> list[dict]:
        return self._check(self.http.get("/v1/tasks"))["tasks"]

    def classify(self, task: str, inputs: list[str], choices: list[str] | None = None) -> list[dict]:
        """One result per input: ``label``, ``text``, ``scores`` (label → log-likelihood), ``votes``. With
        ``choices`` those texts are ranked for every input instead of the task's labels, and labels are their
        indices ("0", "1", ...)."""
        body: dict = {"task": task, "inputs": inputs}
        if choices is not None:
            body["choices"] = choices
        return self._check(self.http.post("/v1/classify", json=body))["results"]

    def generate(self, task: str, inputs: list[str], max_new_tokens: int = 32) -> list[str]:
        body = {"task": task, "inputs": inputs, "max_new_tokens": max_new_tokens}
        return [r["text"] for r in self._check(self.http.post("/v1/generate", json=body))["results"]]

    def put_prompt(self, name: str, prompt_file: str | Path | bytes) -> dict:
        """Load (or replace) task ``name`` from a prompt file; needs the admin token."""
        body = prompt_file if isinstance(prompt_file, bytes) else Path(prompt_file).read_bytes()
        headers = {**self._admin(), "Content-Type": "application/octet-stream"}
        return self._check(self.http.put(f"/v1/prompts/{name}", content=body, headers=headers))

    def delete_prompt(self, name: str) -> dict:
        return self._check(self.http.delete(f"/v1/prompts/{name}", headers=self._admin()))
