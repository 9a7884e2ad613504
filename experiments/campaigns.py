"""Named sets of runs behind the results in the docs: `python -m experiments campaign NAME`
runs each (skipping runs already finished), then writes the comparison table.

Every row of `docs/results/experiments.md` comes from one of these command lines.
"""

import recurrax


# Every built-in mixer (registered when recurrax is imported; a user's plugins come later).
MODELS = tuple(recurrax.registered_mixers())
ADDING_RING = 'mixer_options={"r_min": 0.99, "r_max": 0.9999, "max_phase": 0.031415926535897934}'


def _adding(variant: list[str]) -> list[list[str]]:
    """The adding problem at length 1000, pooled at the last step: the first marked value
    must be carried up to 1000 steps by an eigenvalue with |λ| close to 1 and a phase θ with
    θ·1000 ≪ 1, after a position-wise product of value and marker in the first block.

    Measured on this CPU: trained directly at length 1000, the LRU stays on the 0.167
    plateau (the default ring [0, 0.99] with phases in [0, 2π] for 1500 steps; [0.999,
    0.9999] with phases in [0, π/10] (PathX's ring) or [0, π/100] for 1200 steps). At length
    200 the ring [0.99, 0.9999] with phases in [0, π/100] solves it in 400 steps, so the
    campaign is a length curriculum: 400 steps at length 200, then 600 steps at length 1000
    starting from that model (`--init-from`). Each ablation variant gets the same ring and
    curriculum: without γ normalisation the states of the slowest modes are ~70× larger.
    """
    common = ["adding", "--model", "lru", *variant, "--batch-size", "32", "--lr", "3e-3",
              "--model-set", ADDING_RING]
    short = [*common, "--task-set", "length=200", "--steps", "400"]
    # The short run's folder, as `run` names it (model options hashed as m3dec9e; checked
    # against the command line by tests/test_experiments.py).
    folder = "-".join(["runs/adding", "lru", *variant[1:], "length200", "m3dec9e", "d2", "s0"])
    return [short, [*common, "--task-set", "length=1000", "--steps", "600",
                    "--init-from", folder]]


def _in_hawk_block(task: str) -> list[str]:
    """`--model-set` options that put the LRU in the block the RG-LRU gets on `task`: Hawk's
    block with RMSNorm and a final norm, a width-4 convolution, and Hawk's gated MLP (width
    3) except on selective copying, whose preset has no MLP for any model."""
    options = ["block=hawk", "norm=rms", "final_norm=true", "conv_kernel=4"]
    if task != "selective_copying":
        options.append("mlp_expansion=3")
    return [flag for option in options for flag in ("--model-set", option)]


CAMPAIGNS: dict[str, list[list[str]]] = {
    # minRNN paper, selective copying: the depth trend at 1, 2 and 3 layers.
    "selective-copying": [
        ["selective_copying", "--model", model, "--depth", str(depth)]
        for model in ("mingru", "minlstm")
        for depth in (1, 2, 3)
    ],
    # LRU paper's ablation direction: the full LRU against no γ normalisation and the
    # unstable exponential parameterisation, on the permuted digits (every pixel order
    # scrambled, so the class depends on the whole sequence).
    "lru-ablation": [
        ["digits", "--model", "lru", "--task-set", "permuted=true", *variant]
        for variant in ([], ["--variant", "lru-no-gamma"], ["--variant", "lru-exp-no-gamma"])
    ],
    # The adding problem at length 1000 (see `_adding` below), with the LRU ablation.
    "adding": [
        command
        for variant in ([], ["--variant", "lru-no-gamma"], ["--variant", "lru-exp-no-gamma"])
        for command in _adding(variant)
    ],
    # State tracking: trained on lengths 1-40, evaluated at 64, 128 and 256.
    "parity": [
        ["parity", "--model", model, *extra, "--steps", "1500", "--eval-length", "64",
         "--eval-length", "128", "--eval-length", "256"]
        for model, extra in (
            ("lru", []),
            ("mingru", []),
            ("minlstm", []),
            ("mingru", ["--variant", "signed-mingru"]),
        )
    ],
    # The same runs four times longer, evaluated every 500 steps: does the gap to the
    # paper's 2- and 3-layer numbers (96.8 / 99.5 % for minGRU) close with steps?
    "selective-copying-long": [
        ["selective_copying", "--model", "mingru", "--depth", str(depth), "--steps", "6000",
         "--eval-every", "500", "--out", f"runs/selective_copying-mingru-steps6000-d{depth}-s0"]
        for depth in (3, 2)
    ],
    # Induction heads (Mamba §4.1.2, which trains at L = 256): trained at L = 64 (the small
    # preset) and read at 2^6 ... 2^20 by `extrapolate` (chunks of 8192 steps with carried
    # state; EXTRAPOLATIONS below). The minimal RNNs get a causal convolution of width 4
    # before the mixer, as in Mamba's block: with it, one layer's gate can open exactly on
    # the token after the trigger (measured at L = 64: without it, chance after 600 steps;
    # with it, 100 % by step 1000 at learning rate 5e-3). The LRU's GLU block has none.
    "induction-heads": [
        ["induction_heads", "--model", model, "--steps", "1500", "--lr", "5e-3",
         "--eval-every", "500", *extra]
        for model, extra in (
            ("lru", []),
            ("mingru", ["--model-set", "conv_kernel=4"]),
            ("minlstm", ["--model-set", "conv_kernel=4"]),
        )
    ],
    # Trained directly at L = 256 for 2500 steps (measured: both stay at chance on this
    # budget, which is why the campaign above trains at L = 64).
    "induction-heads-256": [
        ["induction_heads", "--model", model, "--task-set", "length=256", "--steps", "2500",
         "--lr", "5e-3", "--eval-every", "500", *extra]
        for model, extra in (("lru", []), ("mingru", ["--model-set", "conv_kernel=4"]))
    ],
    # What an input-dependent transition buys: the RG-LRU (Hawk block) and the selective SSM
    # next to the LRU and minGRU on the three recall tasks, one budget for all (400 steps of
    # batch 32 on this shared CPU). Every model but the LRU (whose GLU block has none) gets a
    # width-4 causal convolution before its recurrence, as in Hawk's and Mamba's blocks.
    # Own run folders (`--out`): other campaigns train the same task and model longer.
    # The last row of each task is the control: the LRU inside the RG-LRU's own Hawk block
    # (RMSNorm, the convolution, the gated MLP where the task's preset has one), so that
    # only the transition differs from the RG-LRU row.
    "input-dependent": [
        [task, "--model", model, "--steps", "400", "--lr", lr, "--eval-every", "200", *extra,
         "--out", f"runs/{task}-{name}-steps400-d2-s0"]
        for task, lr in (("selective_copying", "3e-3"), ("induction_heads", "5e-3"),
                         ("mqar", "3e-3"))
        for name, model, extra in (
            ("lru", "lru", []),
            ("mingru", "mingru", ["--model-set", "conv_kernel=4"]),
            ("rglru", "rglru", ["--model-set", "conv_kernel=4"]),
            ("selective-ssm", "selective-ssm", ["--model-set", "conv_kernel=4"]),
            ("lru-hawk", "lru", _in_hawk_block(task)),
        )
    ],
    # Every model but the selective SSM: its ListOps training step took 3.7 s on the 2-core
    # CPU (measured beside another job), so 1500 steps would take over an hour; its cost is
    # explained on the speed-selective results page.
    "listops": [["listops", "--model", model] for model in MODELS if model != "selective-ssm"],
    "digits": [["digits", "--model", model] for model in MODELS],
    # The minimal RNNs were still climbing at step 1000 of the digits campaign: 4000 steps.
    "digits-minrnn-long": [
        ["digits", "--model", model, "--steps", "4000", "--eval-every", "500",
         "--out", f"runs/digits-{model}-steps4000-d2-s0"]
        for model in ("mingru", "minlstm")
    ],
    # MNIST-1D against its published table (experiments/report.py, MNIST1D_NUMBERS): every
    # model, three seeds, the whole test split (1,000 sequences).
    **{
        name: [[name, "--model", model, "--seed", str(seed), "--steps", "3000",
                "--eval-every", "500", "--eval-size", "1000"]
               for model in MODELS for seed in range(3)]
        for name in ("mnist1d", "mnist1d-shuffled")
    },
}

# After each run of these campaigns, for each option list:
# `python -m experiments extrapolate RUN_FOLDER OPTIONS` (rows merge into one table).
EXTRAPOLATIONS: dict[str, list[list[str]]] = {
    "induction-heads": [
        ["--examples", "128", "--length", "64", "--length", "256", "--length", "1024",
         "--length", "4096"],
        ["--examples", "16", "--length", "16384", "--length", "65536", "--length", "262144",
         "--length", "1048576"],  # up to 2^20
    ],
}
