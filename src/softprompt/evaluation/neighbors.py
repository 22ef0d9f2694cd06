"""Reading a learned prompt: nearest vocabulary tokens of each prompt position, and prompt-to-prompt similarity.

The paper (section 7) finds, for each prompt token, its top-5 nearest vocabulary tokens by cosine similarity, and
reports semantic clusters and class labels among them. Here the vocabulary is the model's *consumed* input
embeddings (:meth:`~softprompt.core.backbone.Backbone.embedding_matrix`), the space the prompt lives and is compared in.
Notation: P prompt positions, H hidden size, V vocabulary, N prompts, top-k neighbours.

Cosine similarity ignores the norm; a learned position whose best cosine is low (say < 0.2) is not close to any
token, and its "neighbours" are only the least far of many unrelated tokens. Read them with their similarities.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Neighbors:
    """Top-k vocabulary neighbours of each prompt position."""

    token_ids: Tensor  # [P, k] long, most similar first
    similarity: Tensor  # [P, k] cosine similarity
    tokens: list[list[str]]  # [P][k] decoded token text
    norms: Tensor  # [P] L2 norm of each prompt vector (next to the vocabulary's typical norm, for context)

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"position": p, "norm": round(float(self.norms[p]), 4),
                 "neighbors": [{"token": t, "id": int(i), "cosine": round(float(s), 4)}
                               for t, i, s in zip(self.tokens[p], self.token_ids[p], self.similarity[p],
                                                  strict=True)]}
                for p in range(len(self.tokens))]


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """[A, H] × [B, H] → [A, B] cosine similarities (float32; a zero vector has similarity 0 to everything)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """One token decoded on its own (leading spaces kept: ' positive' and 'positive' are different tokens); a
    byte token that is no whole character on its own shows as the tokenizer's own piece name instead of '\ufffd'."""
    text = tokenizer.decode([token_id])
    return str(tokenizer.convert_ids_to_tokens(token_id)) if "\ufffd" in text else text


def nearest_tokens(prompt: Tensor, embeddings: Tensor, tokenizer: PreTrainedTokenizerBase, k: int = 5,
                   chunk: int = 8192) -> Neighbors:
    """Top-``k`` tokens of ``embeddings`` [V, H] by cosine similarity to each row of ``prompt`` [P, H].

    The vocabulary is scanned in chunks of ``chunk`` rows so a large V never builds a [P, V] matrix at once.
    """
    if prompt.dim() != 2 or embeddings.dim() != 2 or prompt.shape[1] != embeddings.shape[1]:
        raise ValueError(f"prompt [P, H] and embeddings [V, H] must share H, got {tuple(prompt.shape)} and "
                         f"{tuple(embeddings.shape)}")
    k = min(k, embeddings.shape[0])
    if k < 1:
        raise ValueError("k must be >= 1")
    p = F.normalize(prompt.float(), dim=-1)
    best_sim = torch.full((prompt.shape[0], 0), float("-inf"))
    best_ids = torch.zeros((prompt.shape[0], 0), dtype=torch.long)
    for start in range(0, embeddings.shape[0], chunk):
        sims = p @ F.normalize(embeddings[start:start + chunk].float(), dim=-1).T  # [P, chunk]
        sim = torch.cat([best_sim, sims], dim=1)
        ids = torch.cat([best_ids, torch.arange(start, start + sims.shape[1]).expand(prompt.shape[0], -1)], dim=1)
        # Sorting (stable) rather than topk keeps equal similarities in id order: the same input, the same output.
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
        best_sim, best_ids = torch.gather(sim, 1, order), torch.gather(ids, 1, order)
    tokens = [[token_text(tokenizer, int(i)) for i in row] for row in best_ids]
    return Neighbors(best_ids, best_sim, tokens, prompt.float().norm(dim=-1))


def verbalizer_hits(neighbors: Neighbors, tokenizer: PreTrainedTokenizerBase, verbalizer: Mapping[str, str]
                    ) -> dict[str, list[int]]:
    """For each verbalizer word (label → text), the prompt positions whose top-k neighbours contain one of the
    word's tokens. A multi-piece word counts a hit on any piece that is more than whitespace (a bare space piece,
    shared by most words, says nothing about the label)."""
    out: dict[str, list[int]] = {}
    for word in dict.fromkeys(verbalizer.values()):
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        ids = {i for i in pieces if tokenizer.decode([i]).strip()} or set(pieces)
        out[word] = [p for p, row in enumerate(neighbors.token_ids.tolist()) if ids & set(row)]
    return out


def prompt_similarity(a: Tensor, b: Tensor) -> tuple[float, Tensor]:
    """Two prompts [Pa, H], [Pb, H] → (mean cosine over aligned positions 0..min(Pa, Pb)-1, the position-wise
    [Pa, Pb] cosine matrix). Position i of one prompt need not play the role of position i of another: the
    matrix shows matches at other offsets."""
    matrix = cosine_matrix(a, b)
    n = min(a.shape[0], b.shape[0])
    aligned = float(matrix.diagonal()[:n].mean()) if n else 0.0
    return aligned, matrix


def similarity_table(prompts: Sequence[Tensor]) -> Tensor:
    """[N, N] mean aligned-position cosine between every pair of N prompts (1 on the diagonal)."""
    n = len(prompts)
    out = torch.ones(n, n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = prompt_similarity(prompts[i], prompts[j])[0]
    return out


def format_neighbors(neighbors: Neighbors) -> list[str]:
    """One line per prompt position: position, norm, then 'token' cosine pairs, most similar first."""
    lines = [f"{'pos':>3}  {'norm':>6}  neighbours (cosine)"]
    for p, (toks, sims) in enumerate(zip(neighbors.tokens, neighbors.similarity.tolist(), strict=True)):
        pairs = " | ".join(f"{t!r} {s:.3f}" for t, s in zip(toks, sims, strict=True))
        lines.append(f"{p:>3}  {float(neighbors.norms[p]):6.3f}  {pairs}")
    return lines


def write_report(path: str | Path, neighbors: Neighbors, *, title: str = "", hits: Mapping[str, list[int]] | None
                 = None, similarity: Tensor | None = None, names: Sequence[str] = ()) -> Path:
    """A report for reading by eye: ``.png`` (a heat map of position × neighbour rank, coloured by cosine, labelled
    with the tokens) or ``.html`` (the same as a coloured table, plus the prompt-to-prompt similarity table)."""
    path = Path(path)
    if path.suffix == ".png":
        _write_png(path, neighbors, title, hits or {})
    elif path.suffix in (".html", ".htm"):
        _write_html(path, neighbors, title, hits or {}, similarity, names)
    else:
        raise ValueError(f"report must end in .png or .html, got {path}")
    return path


def _write_png(path: Path, neighbors: Neighbors, title: str, hits: Mapping[str, list[int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    sim = neighbors.similarity.numpy()
    p, k = sim.shape
    fig, ax = plt.subplots(figsize=(1.6 * k + 2.5, 0.38 * p + 1.6))
    image = ax.imshow(sim, cmap="viridis", vmin=min(0.0, float(sim.min())), vmax=1.0, aspect="auto")
    hit_positions = {pos for positions in hits.values() for pos in positions}
    for i in range(p):
        for j in range(k):
            label = neighbors.tokens[i][j].replace("\n", "\\n")[:14]
            ax.text(j, i, f"{label!r} {sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if sim[i, j] < 0.6 else "black")
    ax.set_xticks(range(k), [f"#{j + 1}" for j in range(k)])
    ax.set_yticks(range(p), [f"{i}{' *' if i in hit_positions else ''}" for i in range(p)])
    ax.set_xlabel("neighbour rank (cosine similarity to the consumed input embeddings)")
    ax.set_ylabel("prompt position (* = a verbalizer word among its neighbours)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="cosine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(text: str, value: float) -> str:
    # White (0) to green (1): a colour a reader scans before reading the number.
    g = int(255 - 120 * max(0.0, min(1.0, value)))
    return f'<td style="background:rgb({g},255,{g})">{html.escape(text)}</td>'


def _write_html(path: Path, neighbors: Neighbors, title: str, hits: Mapping[str, list[int]],
                similarity: Tensor | None, names: Sequence[str]) -> None:
    k = neighbors.similarity.shape[1]
    rows = ["<tr><th>pos</th><th>norm</th>" + "".join(f"<th>#{j + 1}</th>" for j in range(k)) + "</tr>"]
    for p, (toks, sims) in enumerate(zip(neighbors.tokens, neighbors.similarity.tolist(), strict=True)):
        cells = "".join(_cell(f"{t!r} {s:.3f}", s) for t, s in zip(toks, sims, strict=True))
        rows.append(f"<tr><td>{p}</td><td>{float(neighbors.norms[p]):.3f}</td>{cells}</tr>")
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif} td,th{padding:2px 6px;font-family:monospace}</style>",
             f"<h1>{html.escape(title)}</h1>", "<h2>Nearest vocabulary tokens per prompt position</h2>",
             "<table>", *rows, "</table>"]
    if hits:
        parts.append("<h2>Verbalizer words among the neighbours</h2><ul>")
        parts += [f"<li>{html.escape(repr(w))}: positions {pos or 'none'}</li>" for w, pos in hits.items()]
        parts.append("</ul>")
    if similarity is not None:
        parts.append("<h2>Prompt-to-prompt similarity (mean cosine over aligned positions)</h2><table><tr><th></th>"
                     + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
        for name, row in zip(names, similarity.tolist(), strict=True):
            parts.append(f"<tr><th>{html.escape(name)}</th>" + "".join(_cell(f"{v:.3f}", v) for v in row) + "</tr>")
        parts.append("</table>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
