"""Time one compiled training round (forward, backward, AdamW update) of a SAM config.

    taskset -c 1 python benchmarks/training_step_times.py --threads 1 --batch 2x8 4x8

Prints, per batch shape (images x objects per image), the median seconds of a round with
the image encoder frozen (precomputed embeddings) and trained, after compilation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", nargs="+", default=["2x8", "4x8"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="default", help="'default' or a CONFIGS name")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument(
        "--graph-kernel",
        action="store_true",
        help="graph kernel fusion (timing only: MindSpore 2.10 CPU fusion computes the decoder "
        "wrongly)",
    )
    args = parser.parse_args()

    import mindspore as ms
    from mindspore import Tensor

    from napari_sam_ms import runtime
    from napari_sam_ms.build_sam import CONFIGS, build_sam_from_config
    from napari_sam_ms.training.data import sample_batch
    from napari_sam_ms.training.default_model import DEFAULT_CONFIG
    from napari_sam_ms.training.prompts import initial_prompts
    from napari_sam_ms.training.synthetic import SyntheticDataset
    from napari_sam_ms.training.trainer import SamTrainer, TrainConfig

    runtime.configure(cpu_threads=args.threads)
    if args.graph_kernel:
        ms.set_context(enable_graph_kernel=True)
    cfg = dict(DEFAULT_CONFIG if args.config == "default" else CONFIGS[args.config])
    for item in args.set:
        key, value = item.split("=")
        cfg[key] = type(cfg[key])(eval(value)) if key in cfg else eval(value)
    ms.set_seed(0)
    model = build_sam_from_config(cfg)
    n_params = sum(int(np.prod(p.shape)) for p in model.get_parameters())
    print(f"config {cfg}\nparameters {n_params / 1e6:.2f} M")
    size = model.img_size
    data = SyntheticDataset(8, "nuclei", "train", shape=(size, size))
    for shape in args.batch:
        n_img, n_obj = (int(v) for v in shape.split("x"))
        for enc in (False, True):
            trainer = SamTrainer(model, data, None, TrainConfig(train_encoder=enc), log=None)
            rng = np.random.default_rng(0)
            batch = sample_batch(trainer.images, trainer.candidates, rng, n_img, n_obj)
            gt, owner = Tensor(batch.masks.astype(np.float32)), Tensor(batch.owner)
            src = Tensor(batch.pixels) if enc else Tensor(trainer.embeddings(batch.image_index))
            for start in ("point", "box"):
                prompts = initial_prompts(batch.masks, rng, start == "box")
                t0 = time.perf_counter()
                trainer._round(enc, prompts, src, owner, gt)[0].asnumpy()
                compile_s = time.perf_counter() - t0
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    trainer._round(enc, prompts, src, owner, gt)[0].asnumpy()
                    times.append(time.perf_counter() - t0)
                print(
                    f"batch {n_img}x{n_obj} encoder {'trained' if enc else 'frozen '} "
                    f"{start:5s}: {statistics.median(times):.3f} s/round "
                    f"(first call {compile_s:.1f} s)",
                    flush=True,
                )
        t0 = time.perf_counter()
        trainer.embeddings(np.arange(4))
        print(f"embedding: {(time.perf_counter() - t0) / 4:.3f} s/image (compiled, incl. compile)")


if __name__ == "__main__":
    main()
