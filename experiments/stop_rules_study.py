"""Which STOP rule on MMTok's greedy spends a mean budget K* best? (session 17, #18; an experiment script)

    python experiments/stop_rules_study.py 48 [saturation absolute relative remaining]
        -> reports/stepprune_stop_rules_k48.json  (N_CAL / N_TEST in the environment shrink the splits for a smoke run)
    python experiments/stop_rules_study.py --summary 48     # paired bootstrap against world_eval.json's rows
    TAG=v5_ python experiments/stop_rules_study.py 16 saturation absolute  # -> ..._stop_rules_v5_k16.json

Rules, with s_t the score after t chosen tokens (g_t the largest marginal gain, f_t the coverage so far, f(V) the
coverage of all tokens): saturation g_t / g_0 (what the untrained coverage prior's STOP computes), absolute g_t,
relative g_t / f_t, remaining 1 - f_t / f(V).

The untrained coverage prior (W_q = 0) is MMTok's greedy with a STOP rule; this isolates the rule. Each rule
gives a per-step score s_t (t tokens chosen so far); K = first t >= min_k with s_t < threshold (else T_max = 2K*).
One threshold per rule, bisected on 1,000 validation records to mean K*; evaluated on the 2,000 test questions
of reports/world_eval.json (same records, so paired with its MMTok rows).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from steprune.data.world.dataset import generate_records  # noqa: E402
from steprune.data.world_datamodule import world_config  # noqa: E402
from steprune.eval.world_accuracy import world_accuracy  # noqa: E402
from steprune.eval.world_eval import spearman  # noqa: E402
from steprune.pruned_vlm import PrunedVLM  # noqa: E402
from steprune.pruners.contract import PrePrunerBase, PruneContext, PruneResult  # noqa: E402
from steprune.pruners.mmtok import default_coverage_t  # noqa: E402

BASE = "artifacts/base"
TAG = os.environ.get("TAG", "")  # a prefix of the output name, e.g. the base: "v5_"


class RuleGreedy(PrePrunerBase):
    name = "rule_greedy"
    reads_text = True
    adaptive = True

    def __init__(self, rule: str, t_max: int, threshold: float = -math.inf, min_k: int = 1) -> None:
        self.rule, self.t_max, self.threshold, self.min_k = rule, t_max, threshold, min_k
        self.scores: list[torch.Tensor] = []  # (B, T_max) per batch when recording

    def trajectory(self, ctx: PruneContext) -> tuple[torch.Tensor, torch.Tensor]:
        cover = default_coverage_t(ctx.image_tokens, ctx.vision_features, ctx.text_embeds, ctx.text_mask)  # (B,N,R)
        b, n, r = cover.shape
        best = cover.new_zeros(b, r)
        taken = torch.zeros(b, n, dtype=torch.bool)
        total = cover.max(dim=1).values.sum(dim=1)  # (B,) f(V)
        picks, scores = [], []
        g0 = None
        for t in range(self.t_max):
            gain = (cover - best[:, None, :]).clamp_min(0).sum(-1).masked_fill(taken, -1.0)  # (B, N)
            g, j = gain.max(dim=1)
            f = best.sum(dim=1)
            g0 = g if g0 is None else g0
            if self.rule == "saturation":
                s = g / g0
            elif self.rule == "absolute":
                s = g
            elif self.rule == "relative":
                s = g / f.clamp_min(1e-12) if t > 0 else torch.full_like(g, math.inf)
            elif self.rule == "remaining":
                s = 1 - f / total
            else:
                raise ValueError(self.rule)
            scores.append(s)
            picks.append(j)
            taken.scatter_(1, j[:, None], True)
            best = torch.maximum(best, cover.gather(1, j[:, None, None].expand(b, 1, r)).squeeze(1))
        return torch.stack(picks, 1), torch.stack(scores, 1)

    def select(self, ctx: PruneContext) -> PruneResult:
        picks, scores = self.trajectory(ctx)
        if self.threshold == -math.inf:
            self.scores.append(scores)
        k = lengths(scores, self.threshold, self.min_k)  # (B,)
        chosen = torch.zeros(picks.shape[0], ctx.image_tokens.shape[1], dtype=torch.bool)
        steps = torch.arange(picks.shape[1])[None, :] < k[:, None]
        chosen.scatter_(1, picks, steps)
        return PruneResult.from_mask(chosen)


def lengths(scores: torch.Tensor, threshold: float, min_k: int) -> torch.Tensor:
    t_max = scores.shape[1]
    steps = torch.arange(t_max)[None, :]
    stop = (scores < threshold) & (steps >= min_k)
    return torch.where(stop.any(1), stop.float().argmax(1), torch.full_like(stop[:, 0], t_max, dtype=torch.long))


def calibrate(scores: torch.Tensor, k_star: float, min_k: int) -> float:
    lo, hi = float(scores[scores.isfinite()].min()) - 1, float(scores[scores.isfinite()].max()) + 1
    for _ in range(100):  # mean K is non-increasing in the threshold (a larger one stops earlier)
        mid = (lo + hi) / 2
        if lengths(scores, mid, min_k).float().mean() > k_star:
            lo = mid
        else:
            hi = mid
    a, b = lengths(scores, lo, min_k).float().mean(), lengths(scores, hi, min_k).float().mean()
    return lo if abs(a - k_star) <= abs(b - k_star) else hi


def main() -> None:
    k_star = int(sys.argv[1])
    rules = sys.argv[2:] or ["saturation", "absolute", "relative", "remaining"]
    base = PrunedVLM.from_pretrained(BASE, method="identity", budget=None, dtype=torch.float32)
    cfg = world_config(json.loads(Path(f"{BASE}/build_info.json").read_text()).get("world"))

    calib = generate_records("val", int(os.environ.get("N_CAL", 1000)), cfg, 0)
    test = generate_records("test", int(os.environ.get("N_TEST", 2000)), cfg, 0)
    world = json.loads(Path("reports/world_eval.json").read_text())
    vanilla = next(r for r in world["rows"] if r["method"] == "vanilla")
    out = {}
    for rule in rules:
        rec = RuleGreedy(rule, 2 * k_star)
        vlm = PrunedVLM(base.model, base.processor, method=rec, budget=k_star)
        for s in range(0, len(calib), 100):  # record the trajectories only (no generation)
            from steprune.data.collate import InstructCollator

            batch = InstructCollator(base.processor, "eval")(calib[s : s + 100])
            vlm(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        scores = torch.cat(rec.scores)
        thr = calibrate(scores, k_star, 1)
        k_cal = float(lengths(scores, thr, 1).float().mean())
        pruner = RuleGreedy(rule, 2 * k_star, thr)
        res = world_accuracy(PrunedVLM(base.model, base.processor, method=pruner, budget=k_star), test)
        objects, ks = zip(*res["objects_and_k"], strict=True)
        out[rule] = {
            "threshold": thr,
            "k_calibration": k_cal,
            "k_mean": res["k_mean"],
            "k_min": res["k_min"],
            "k_max": res["k_max"],
            "rho": spearman(objects, ks),
            "overall": res["overall"],
            "retention": res["overall"] / vanilla["overall"],
            "per_kind": res["per_kind"],
            "correct": res["correct"],
            "k_per_question": list(ks),
        }
        print(rule, {k: v for k, v in out[rule].items() if k not in ("correct", "k_per_question")}, flush=True)
        Path(f"reports/stepprune_stop_rules_{TAG}k{k_star}.json").write_text(json.dumps(out))


def summary(k: int) -> None:
    import numpy as np

    rules = json.loads(Path(f"reports/stepprune_stop_rules_{TAG}k{k}.json").read_text())
    world = json.loads(Path("reports/world_eval.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in world["rows"] if "flops_match" not in r}
    van = np.array(rows[("vanilla", None)]["correct"], float)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(van), (2000, len(van)))

    def ci(x):  # x (N,) per-question contribution
        m = x[idx].mean(1)
        return 100 * x.mean(), 100 * np.percentile(m, 2.5), 100 * np.percentile(m, 97.5)

    refs = [("mmtok", k), ("holov", k)]
    for name, r in rules.items():
        c = np.array(r["correct"], float)
        line = (
            f"{name}: K {r['k_mean']:.1f} ({r['k_min']}-{r['k_max']}) rho {r['rho']:.2f} ret {100 * r['retention']:.1f}"
        )
        lo_hi = ci(c / van.mean())
        line += f" [{lo_hi[1]:.1f}, {lo_hi[2]:.1f}]"
        for m, b in refs:
            d = ci((c - np.array(rows[(m, b)]["correct"], float)) / van.mean())
            line += f" | vs {m}@{b} ({100 * rows[(m, b)]['retention']:.1f}): {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]"
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(int(sys.argv[2]))
    else:
        main()
