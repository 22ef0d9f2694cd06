"""How far a trained prompt moved from its initialisation: per position, the init token, the cosine between the
initial and the trained vector, the norm before and after, and the init token's rank among the trained vector's
nearest tokens. Re-creates the init from the prompt file's own train_config (init, seed, P) and the task's labels.

    PYTHONPATH=src python scripts/prompt_drift.py runs/sst2-seed1.safetensors > docs/data/ensembles/drift.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from softprompt.core.backbone import load_backbone
from softprompt.core.promptfile import check_compatible, load_prompt
from softprompt.evaluation.neighbors import nearest_tokens
from softprompt.training.initializers import init_prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--model", default=None, help="default: the prompt's base model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allow-other-model", action="store_true",
                        help="use a --model whose weights differ from the prompt's model (a warning, not an error)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pf = load_prompt(args.file)
    backbone = load_backbone(args.model or pf.meta.base_model)
    check_compatible(pf, backbone, where=args.file, allow_other_model=args.allow_other_model)
    cfg = pf.meta.train_config
    labels = list(dict.fromkeys(pf.meta.verbalizer.values()))
    strategy = cfg["init"] if cfg["init"] != "class-label" or labels else "sampled-vocab"
    init = init_prompt(backbone, strategy, cfg["prompt_length"], seed=cfg["seed"], label_words=labels,
                       text=cfg.get("init_text"))
    emb = backbone.embedding_matrix()
    start = nearest_tokens(init, emb, backbone.tokenizer, 1)
    sims = F.normalize(pf.prompt, dim=-1) @ F.normalize(emb, dim=-1).T  # [P, V]
    rows = []
    for p in range(pf.prompt.shape[0]):
        tid = int(start.token_ids[p, 0])
        rows.append({"position": p, "init_token": start.tokens[p][0],
                     "cosine_to_init": round(float(F.cosine_similarity(init[p], pf.prompt[p], dim=0)), 4),
                     "norm_init": round(float(init[p].norm()), 3), "norm_trained": round(float(pf.prompt[p].norm()), 3),
                     "init_token_rank_now": int((sims[p] > sims[p, tid]).sum()) + 1})
    print(json.dumps({"file": args.file, "init": strategy, "seed": cfg["seed"], "steps": cfg["steps"],
                      "positions": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
