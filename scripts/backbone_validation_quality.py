"""Dense-backbone quality on the validation split, per profile: what the quick recipes cost.

The quick profile's shorter backbone training is chosen by wall time; this reads what it costs on
the *validation* split (never the evaluation split), next to the full recipe's, so the choice can
be checked without looking at test data. Backbones come from the model cache (trained there first
when missing, as ``bench run`` would).

    python scripts/backbone_validation_quality.py --seeds 0 --profiles quick,full
"""

from __future__ import annotations

import argparse

import torch

from dynbench.cache_dirs import model_cache_dir
from dynbench.config import SuiteSpec, parse_plugin_list
from dynbench.harness import measure
from dynbench.harness.planning import plan_suite
from dynbench.methods.base import METHODS


def main() -> None:
    """Print one line per task, profile and seed: validation samples and quality."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fashion-mnist,spoken-commands,shakespeare")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--profiles", default="quick,full")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    print("task\tprofile\tseed\tsplit\tsamples\tquality\tunit")
    for profile in args.profiles.split(","):
        suite = SuiteSpec(
            methods=parse_plugin_list("dense"), tasks=parse_plugin_list(args.tasks), seeds=seeds, profile=profile
        )
        for plan in plan_suite(suite.runs()):
            task, seed = plan.task, plan.spec.seed
            dense = METHODS.get("dense")().wrap(task.backbone(seed, cache_dir=model_cache_dir())).eval()
            batches = list(task.batches(task.validation_split, batch_size=128))
            with torch.inference_mode():
                q = measure.quality_pass(dense, 1.0, batches, task)
            value = task.metric.aggregate(q.scores)
            print(f"{task.name}\t{profile}\t{seed}\t{task.validation_split}\t{len(q.scores)}\t{value:.4f}\t"
                  f"{task.metric.spec.unit}")  # fmt: skip


if __name__ == "__main__":
    main()
