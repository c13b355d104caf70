"""The seed's Keras/TensorFlow network, timed as the reference for `bench_train.py`.

Runs in its own virtual environment with TensorFlow (`bench_train.py` creates it) and prints
one JSON object: seconds per `train_on_batch` step at each batch size on random data after a
warm-up, and seconds per `model.predict` of one 128^3 volume.

    .venv-bench/bin/python benchmarks/keras_seed.py --batches 1 2 4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up notes off stdout


def seed_model(side: int):
    """The original Sequential model, layer for layer (996,673 parameters at any input size)."""
    from tensorflow import keras
    from tensorflow.keras import layers

    def conv(n: int):
        return layers.Conv3D(n, 3, activation="relu", padding="same")

    def up(n: int):
        return layers.Conv3DTranspose(n, 3, activation="relu", padding="same")

    model = keras.Sequential(
        [
            keras.Input((side, side, side, 1)),
            conv(32),
            layers.MaxPool3D(2),
            conv(64),
            layers.MaxPool3D(2),
            conv(128),
            layers.MaxPool3D(2),
            up(128),
            layers.UpSampling3D(2),
            up(64),
            layers.UpSampling3D(2),
            up(32),
            layers.UpSampling3D(2),
            layers.Conv3D(1, 1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


def summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()

    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    if args.precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = seed_model(args.side)
    rng = np.random.default_rng(0)
    train = {}
    for batch in args.batches:
        shape = (batch, args.side, args.side, args.side, 1)
        x = rng.standard_normal(shape, dtype=np.float32)
        y = (rng.random(shape) > 0.9).astype(np.float32)
        model.train_on_batch(x, y)  # warm-up: graph tracing and oneDNN kernel selection
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - t0)
        train[str(batch)] = summary(times)
    x = rng.standard_normal((1, args.side, args.side, args.side, 1), dtype=np.float32)
    model.predict(x, batch_size=1, verbose=0)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        model.predict(x, batch_size=1, verbose=0)
        times.append(time.perf_counter() - t0)
    result = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "precision": args.precision,
        "side": args.side,
        "params": int(model.count_params()),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)"),
        "train_step": train,
        "predict_1": summary(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
