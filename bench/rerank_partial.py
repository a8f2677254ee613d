"""Re-ranking choices for full and single-view (partial) point targets, on the validation targets.

    python bench/rerank_partial.py   (needs data/default, see docs/model.md)

For the 20 nearest retrieved sources, deformed by the default model, picks the one minimising
scan->source + w * source->scan distance and reports its chamfer (x1e-2) to the *whole* true shape.
w = 1 is the symmetric chamfer the fitter uses.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pathlib import Path

import numpy as np
import torch

from backend.model.checkpoint import load_checkpoint
from backend.model.geometry import chamfer_distance, project_positive
from backend.model.networks import deformed_points
from training.joint.data import prepare
from training.joint.train import TrainConfig, target_batch

cfg = TrainConfig.from_toml("training/configs/default.toml")
data = prepare(Path(cfg.data), cfg.source_fraction, cfg.val_fraction, cfg.model.source_points, 0, build=False)
model = load_checkpoint("backend/checkpoints/default.pt")[0]
S = data.sources
emb = model.retrieval.embed_sources(S)[0]
g, p = model.deformation.encode_sources(S)


def one_sided(a, b):  # mean over b of nearest in a
    d = torch.cdist(b, a)
    return d.min(2).values.square().mean(1)


res = {}
with torch.no_grad():
    for partial in (0.0, 1.0):
        gen = torch.Generator().manual_seed(1)
        scores = {w: [] for w in (1.0, 0.5, 0.25, 0.0)}
        for row in range(len(data.val)):
            target, truth = target_batch(data.val, torch.tensor([row]), "points", 1024, 0.0, gen, partial)
            order = torch.cdist(model.retrieval.embed_target(target, "points"), emb)[0].argsort()[:20]
            ch = S.select(order)
            boxes = model.deformation.predict_boxes(
                ch, g[order], p[order], model.deformation.encode_target(target, "points").expand(20, -1)
            )
            boxes = project_positive(boxes, ch.basis, ch.min_half, ch.part_mask)
            pts = deformed_points(ch, boxes)
            to_scan = one_sided(pts, target.expand(20, -1, -1))  # scan -> source
            to_src = one_sided(target.expand(20, -1, -1), pts)  # source -> scan
            true_fit = chamfer_distance(pts, truth.expand(20, -1, -1))
            for w in scores:
                scores[w].append(float(true_fit[(to_scan + w * to_src).argmin()]) * 100)
        res[partial] = {w: round(np.mean(v), 4) for w, v in scores.items()}
print(res)
