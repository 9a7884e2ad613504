"""The layers and models the command line points the checks at (small, seeded)."""

import jax

import recurrax


def key(seed, i=0):
    return jax.random.fold_in(jax.random.key(seed), i)


def lru_model(seed, *, dtype="float32", pooling="none"):
    config = recurrax.ModelConfig(
        mixer="lru",
        d_model=16,
        depth=2,
        input_size=3,
        output_size=2,
        state_size=16,
        norm="layer",
        pooling=pooling,
        mixer_options={"r_min": 0.9, "r_max": 0.999},
        param_dtype=dtype,
    )
    return config.build(key=key(seed, 1))[0]


def ssm_model(seed):
    config = recurrax.ModelConfig(
        mixer="ssm",
        d_model=16,
        depth=2,
        input_size=3,
        output_size=2,
        state_size=16,
        norm="layer",
        mixer_options={"init": "s4d-lin", "discretisation": "bilinear", "delta": "per_feature"},
    )
    return config.build(key=key(seed, 2))[0]


def minlstm_model(seed):
    config = recurrax.ModelConfig(
        mixer="minlstm",
        block="mlp",
        d_model=8,
        depth=2,
        expansion=2,
        conv_kernel=4,
        mlp_expansion=2,
        norm="rms",
        vocab_size=11,
        output_size=11,
        pooling="none",
        mixer_options={"log_space": True},
        param_dtype="float64",
    )
    return config.build(key=key(seed, 3))[0]


def ssms(seed, quick):
    variants = [
        (recurrax.ZeroOrderHold(), "per_state", True, False),
        (recurrax.Bilinear(), "per_feature", False, True),
    ]
    if not quick:
        variants += [
            (recurrax.BackwardEuler(), "per_state", False, False),
            (recurrax.ZeroOrderHold(), "per_feature", True, False),
            (recurrax.Bilinear(), "per_state", True, True),
        ]
    return [
        recurrax.DiagonalSSM(
            3,
            8,
            discretisation=d,
            delta=delta,
            conjugate_symmetric=symmetric,
            bidirectional=bidirectional,
            key=key(seed, 10 + i),
        )
        for i, (d, delta, symmetric, bidirectional) in enumerate(variants)
    ]


def lrus(seed):
    return [
        recurrax.LRU(3, 8, r_min=0.5, r_max=0.99, key=key(seed, 20)),
        recurrax.LRU(3, 8, bidirectional=True, key=key(seed, 21)),
    ]


def recurrent_layers(seed, quick):
    ssm = ssms(seed, True)
    layers = [
        lrus(seed)[0],
        ssm[0],
        recurrax.MinGRU(3, 5, log_space=True, key=key(seed, 30)),
        recurrax.MinLSTM(3, 5, key=key(seed, 31)),
    ]
    if not quick:
        layers += [
            recurrax.DiagonalSSM(3, 8, delta="per_feature", key=key(seed, 32)),
            recurrax.MinGRU(3, 5, key=key(seed, 33)),
            recurrax.MinGRU(3, 5, candidate="linear", key=key(seed, 34)),
            recurrax.MinLSTM(3, 5, log_space=True, key=key(seed, 35)),
        ]
    return layers
