"""Stage 3, training: an arm and a seed -> a run directory with its checkpoint and metrics.

    loop.py        one run: setup, the optimizer step, metrics, checkpoints, Ctrl-C, resume (python -m revena_lib.train)
    batches.py     what each step reads: a pure function of (seed, step), the same for every arm
    launch.py      every arm and seed of a preset, in this process or as parallel one-thread processes
    runs.py        where runs live (trained/<arm>/<preset>/seed-<seed>/), finding finished ones, their metrics
    checkpoint.py  atomic writes, safe loading, load_model(run_dir) for everything downstream
    device.py      CPU or CUDA, threads, the autocast dtype, torchrun processes
    export.py      a finished run -> the Hugging Face Hub layout, and back (python -m revena_lib.export)
    recipes.py     named copying recipes: what a preset's training changes to teach copying
    trunk.py       pretrained trunks (trunks/<preset>/seed-<seed>/): saved, loaded and verified, the start of a run

    from revena_lib.training.loop import train
    run = train("smoke", arm="with_ltm", seed=1337)     # Path('trained/with_ltm/smoke/seed-1337')
"""


class TrainError(RuntimeError):
    """A training request that cannot run as asked (bad seed or steps, an existing run, data too short)."""
