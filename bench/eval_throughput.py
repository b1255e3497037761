"""Evaluation throughput: requests/s of AblateLM against lm-eval's HFLM on the same model exported
with to_hf, the same requests, the same threads, side by side in one run.

    python bench/eval_throughput.py [--run results/default/<run>] [--items 300] [--threads 2]

Without --run, trains nothing: it builds the default model (random weights, built-in tokenizer)
so that the measurement needs no prior run. The requests are those of the probe suite's recall task
(multiple choice: one request per value in each table) and agreement task (minimal pairs).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def requests_of(tasks: dict[str, Path], manager, items: int) -> list:
    from lm_eval.tasks import get_task_dict

    instances = []
    for task in get_task_dict(list(tasks), manager).values():
        task.build_all_requests(limit=items, rank=0, world_size=1)
        instances += task.instances
    return instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run directory whose model transformers implements")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.models.huggingface import HFLM

    from ablate.config import RunConfig
    from ablate.data.tokens import prepare
    from ablate.evaluate import probe_dir, task_manager
    from ablate.evaluate.export import hf_tokenizer
    from ablate.evaluate.lm import AblateLM, load_run
    from ablate.hf import to_hf
    from ablate.model import Transformer
    from ablate.train import padded_vocab

    if args.run:
        loaded = load_run(args.run)
        model, tokenizer, cfg = loaded.model, loaded.tokenizer, loaded.cfg
    else:
        cfg = RunConfig()
        data = prepare(cfg.data)
        cfg.model.vocab_size = padded_vocab(data.vocab_size)
        model, tokenizer = Transformer(cfg.model).eval(), data.tokenizer
    ours = AblateLM(model=model, tokenizer=tokenizer, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "hf"
        to_hf(model).save_pretrained(export)
        hf_tokenizer(tokenizer).save_pretrained(export)
        theirs = HFLM(pretrained=str(export), dtype="float32", batch_size=args.batch, device="cpu")
        probes = probe_dir(cfg.data.cache_dir, 1234, max(args.items, 100))
        files = {"ablate_recall": probes / "recall.jsonl", "ablate_agreement": probes / "agreement.jsonl"}
        manager = task_manager({k: str(v) for k, v in files.items()})
        instances = requests_of(files, manager, args.items)
        timings: dict[str, list[float]] = {"ablate": [], "transformers (HFLM)": []}
        for i in range(args.repeats):
            for name, lm in [("ablate", ours), ("transformers (HFLM)", theirs)][:: 1 if i % 2 else -1]:
                start = time.perf_counter()
                lm.loglikelihood(instances, disable_tqdm=True)
                timings[name].append(time.perf_counter() - start)
    print(f"{len(instances)} loglikelihood requests (recall + agreement probes, {args.items} items each), "
          f"batch {args.batch}, {args.threads} threads, {model.num_parameters():,} parameters")
    rates = {name: len(instances) / min(ts) for name, ts in timings.items()}
    for name, rate in rates.items():
        print(f"{name:>20}: {rate:8.1f} requests/s  (best of {args.repeats})")
    print(f"ratio ablate / HFLM: {rates['ablate'] / rates['transformers (HFLM)']:.2f}x")


if __name__ == "__main__":
    main()
