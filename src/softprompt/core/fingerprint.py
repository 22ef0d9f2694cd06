"""Model identity: which weights a prompt was trained on, and whether a loaded model holds the same ones.

A prompt is a point in the space one particular model consumes; on other weights it means nothing, and it fails
silently (the model still answers). So a prompt file records a fingerprint of its model, and loading it onto a model
compares the two (:func:`softprompt.core.promptfile.check_compatible`).

Version 2 (``model_fingerprint``): every parameter tensor, in name order, contributes ``SAMPLE`` values at fixed,
spread-out positions — embeddings, every transformer block, norms, biases and heads alike, so a fine-tuned model with
untouched embeddings is told apart. The sample is gathered on the model's device and only it is copied (no full
copy of a big tensor): a 1.5B model has ~340 tensors, ~22k values. Two numbers come out:

- ``digest``: sha256 of the names, shapes and float32 sample values — exact identity for the same dtype;
- ``probe`` / ``magnitude``: the signed sum and the sum of absolute values of each ``CHUNK`` consecutive sample values
  of a tensor — for the same model held in another dtype (trained in bf16 on a GPU, served in fp32), whose sampled
  values differ by rounding only, so its hash differs. Small chunks keep the test sharp: rounding moves a chunk's sum
  by at most ``u · magnitude`` (worst case, linear in the chunk size) while a random perturbation of the weights moves
  it by ~``sqrt(CHUNK)`` of a value's change, so the fewer values a chunk adds, the larger the changes it catches.

Version 1 (``embedding_fingerprint``, kept to check version-1 files): 64 evenly spaced rows of the input embedding
matrix, hashed, and 8 probe sums over them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from softprompt.core.backbone import Backbone

SAMPLE = 64  # values sampled from each parameter tensor (all of a smaller one)
CHUNK = 8  # sample values per probe sum
# Sample position i of an n-value tensor is i * STRIDE mod n: STRIDE is a prime (Knuth's multiplicative-hash
# constant), so the positions are distinct and scattered over rows and columns alike, where a plain stride n // SAMPLE
# would often land in one column of a matrix.
STRIDE = 2654435761
# Extra relative tolerance on top of the rounding bounds: the probe sums are stored with 9 significant digits and the
# bound is taken relative to the rounded magnitude rather than the unknown exact one (a factor 1 + u ≤ 1 + 2^-8).
# 2^-14 covers both and adds 1.5 % to bf16's bound.
SLACK = 2.0**-14

# Version 1: rows of the input embedding matrix hashed into a fingerprint (a fixed, spread-out slice), 8 probe sums.
V1_ROWS = 64
V1_CHUNKS = 8


@dataclass(frozen=True)
class Fingerprint:
    """A model's identity as a prompt file stores it (``labels`` is not stored: it names chunks in messages)."""

    digest: str  # sha256 hex
    probe: list[float]  # signed sum of each chunk of the sample
    magnitude: list[float]  # sum of |value| of each chunk
    dtype: str  # weight dtype ("float32", "bfloat16", ...); "" when not recorded (version 1)
    labels: list[str] = field(default_factory=list, compare=False)  # parameter name of each chunk


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_dtype(model: nn.Module) -> str:
    """The lowest-precision floating dtype among the model's parameters (the one that bounds its rounding)."""
    floats = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not floats:  # fully integer-quantized weights: no rounding bound applies
        return dtype_name(next(model.parameters()).dtype)
    return dtype_name(max(floats, key=lambda d: torch.finfo(d).eps))


def sample(weight: Tensor) -> Tensor:
    """[min(n, SAMPLE)] float32 values of ``weight`` at fixed positions, on the CPU (only they are copied)."""
    weight = weight.detach()
    if hasattr(weight, "full_tensor"):
        # A block sharded by FSDP2 (a DTensor): its values at global positions are spread over the processes, so it
        # is gathered whole, one tensor at a time. A collective: every process fingerprints together (the trainer
        # builds the prompt file's metadata on all of them), and the digest is the unsharded model's.
        weight = weight.full_tensor()
    n = weight.numel()
    positions = torch.arange(min(n, SAMPLE), dtype=torch.long)
    if n > SAMPLE:
        positions = positions * STRIDE % n
    # torch.take indexes the tensor as if flattened, without making it contiguous first.
    return torch.take(weight, positions.to(weight.device)).to("cpu", torch.float32)


def _sig(x: float) -> float:
    return float(f"{x:.9g}")  # 9 significant digits: ~5e-10 relative, far below any rounding bound here


def model_fingerprint(model: nn.Module) -> Fingerprint:
    """The version-2 fingerprint: a sample of every parameter tensor (tied weights counted once), in name order."""
    digest = hashlib.sha256()
    padded: list[Tensor] = []
    labels: list[str] = []
    for name, weight in sorted(model.named_parameters(), key=lambda item: item[0]):
        values = sample(weight)
        digest.update(f"{name}\0{tuple(weight.shape)}\0".encode())
        digest.update(values.numpy().tobytes())
        chunks = -(-values.numel() // CHUNK)
        # Zeros complete a tensor's last chunk: they add nothing to either sum, and keep chunks within one tensor.
        padded.append(torch.nn.functional.pad(values, (0, chunks * CHUNK - values.numel())))
        labels += [name] * chunks
    rows = torch.cat(padded).double().view(-1, CHUNK)  # float64 sums: no accumulation error worth a tolerance
    probe = [_sig(x) for x in rows.sum(dim=1).tolist()]
    magnitude = [_sig(x) for x in rows.abs().sum(dim=1).tolist()]
    return Fingerprint(digest.hexdigest(), probe, magnitude, weight_dtype(model), labels)


def embedding_fingerprint_v1(backbone: Backbone) -> Fingerprint:
    """The version-1 fingerprint: 64 evenly spaced rows of the input embedding matrix (``dtype`` not recorded)."""
    weight = backbone.model.get_input_embeddings().weight.detach()
    step = max(1, weight.shape[0] // V1_ROWS)
    rows = weight[::step][:V1_ROWS].float().cpu().contiguous()
    digest = hashlib.sha256(rows.numpy().tobytes()).hexdigest()
    chunks = rows.chunk(V1_CHUNKS, dim=0)
    return Fingerprint(digest, [float(c.sum()) for c in chunks], [float(c.abs().sum()) for c in chunks], "")


def rounding_bound(dtype: str) -> tuple[float, float] | None:
    """(relative, absolute) bound on rounding one real value to ``dtype``; None for a non-float dtype.

    Round-to-nearest moves a value by at most half a unit in the last place: ``eps / 2`` of it — 2^-8 for bf16
    (8 significant bits), 2^-11 for fp16, 2^-24 for fp32. Below the smallest normal number the spacing stops
    shrinking, so a value there moves by at most half the subnormal spacing (2^-25 for fp16) instead.
    """
    try:
        info = torch.finfo(getattr(torch, dtype))
    except (AttributeError, TypeError):
        return None
    return info.eps / 2, info.smallest_normal * info.eps / 2


def probe_mismatch(stored: Fingerprint, loaded: Fingerprint) -> str | None:
    """Why ``loaded`` is not ``stored``'s model held in another dtype (None: it may be).

    Both dtypes' samples are roundings of the same real weights w, so each value pair differs by at most
    ``(u_a + u_b)·|w|`` (plus the subnormal floors), and a chunk's signed sums, and its magnitude sums, by at most
    that times the chunk's magnitude. The bound is the worst case, so the same model is never refused; a model whose
    weights moved by more than rounding in any chunk of any tensor is.
    """
    a, b = rounding_bound(stored.dtype), rounding_bound(loaded.dtype)
    if a is None or b is None:
        return f"its weights are {loaded.dtype}, the prompt's model's {stored.dtype}: no rounding bound compares them"
    if len(stored.probe) != len(loaded.probe) or len(stored.magnitude) != len(stored.probe):
        return f"a different set of weights ({len(loaded.probe)} probe sums, the prompt's model {len(stored.probe)})"
    rel, floor = a[0] + b[0] + SLACK, a[1] + b[1]
    for i, (pa, pb, ma, mb) in enumerate(zip(stored.probe, loaded.probe, stored.magnitude, loaded.magnitude,
                                             strict=True)):
        tol = rel * max(ma, mb) + CHUNK * floor
        if not (abs(pa - pb) <= tol and abs(ma - mb) <= tol):  # `not <=`: a NaN sum fails too
            where = loaded.labels[i] if loaded.labels else f"probe sum {i}"
            return f"its weights differ beyond {stored.dtype}/{loaded.dtype} rounding (first in {where})"
    return None


def probe_mismatch_v1(stored: Fingerprint, loaded: Fingerprint, rtol: float) -> str | None:
    """The version-1 rule: each of the 8 embedding probe sums within ``rtol`` of its chunk's magnitude sum."""
    close = len(stored.probe) == len(loaded.probe) and all(
        abs(x - y) <= rtol * m for x, y, m in zip(stored.probe, loaded.probe, loaded.magnitude, strict=True))
    return None if close else "its embedding fingerprint differs"
