"""Model and training presets: `small` (minutes on a 2-core CPU) and `paper` (the papers'
settings, for a GPU), per task and model family.

The model families follow their papers, by the block each mixer registered
(`recurrax.MixerSpec.block`): the LRU and the diagonal SSM in the LRU paper's GLU block with
BatchNorm (App. D); minGRU, minLSTM, GRU and LSTM in the minRNN paper's block with
LayerNorm; the RG-LRU and the selective SSM in Hawk's block (RMSNorm, a width-4
convolution, a gated MLP of width 3 × d_model). A user's mixer gets its block's settings.
"""

import math
from typing import Any

import recurrax

from .tasks import make_task


def _family(model: str, preset: str) -> dict[str, Any]:
    """The block settings of the family the mixer was published with (its registered
    `block`), and the papers' settings of the built-in mixers."""
    block = recurrax.mixer_spec(model, owner="presets", option="model").block
    if block == "glu":  # the LRU paper's block (App. D)
        base = dict(block="glu", norm="batch", prenorm=True)
        base["state_size"] = 256 if preset == "paper" else 64
        if model == "lru":
            base["mixer_options"] = {"r_min": 0.0, "r_max": 0.99, "max_phase": 2 * math.pi}
        return base
    if block == "hawk":
        base = dict(block="hawk", norm="rms", prenorm=True, final_norm=True, conv_kernel=4)
        base.update(mlp_expansion=3, expansion=1)
        if model == "selective-ssm":
            base["state_size"] = 16  # per feature, as in Mamba
        return base
    return dict(block="mlp", norm="layer", prenorm=True, final_norm=True, expansion=2)


# Per-task settings: model overrides ("model") and training settings; "small" first.
TASK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "selective_copying": {
        # minRNN paper: 3 layers, d_model 64, expansion 6, dropout 0.1, batch 64, 400k steps,
        # lr 3e-4, clip 1; no convolution and no MLP.
        "small": dict(
            model=dict(d_model=64, depth=2, conv_kernel=None, mlp_expansion=None),
            steps=1500, batch_size=32, learning_rate=3e-3, eval_every=250,
        ),
        "paper": dict(
            model=dict(d_model=64, depth=3, expansion=6, dropout=0.1),
            steps=400_000, batch_size=64, learning_rate=3e-4, eval_every=5000,
            checkpoint_every=5000,
        ),
    },
    "listops": {
        # LRU paper Table 9: H 128, N 256, depth 6, batch 32, 80k steps, LR factor 0.5,
        # dropout 0, r in [0, 0.99], weight decay 0.05.
        "small": dict(
            model=dict(d_model=64, depth=2), steps=1500, batch_size=32, learning_rate=2e-3,
            lr_factor=0.5, eval_every=250,
        ),
        "paper": dict(
            model=dict(d_model=128, depth=6), steps=80_000, batch_size=32, learning_rate=1e-3,
            lr_factor=0.5, eval_every=2000, checkpoint_every=2000,
        ),
    },
    "digits": {
        "small": dict(
            model=dict(d_model=64, depth=2), steps=1000, batch_size=32, learning_rate=3e-3,
            lr_factor=0.5, eval_every=200,
        ),
        "paper": dict(
            model=dict(d_model=128, depth=4), steps=20_000, batch_size=50, learning_rate=1e-3,
            lr_factor=0.25, eval_every=1000, checkpoint_every=1000,
        ),
    },
}
DEFAULT_TASK_PRESET = {
    "small": dict(model=dict(d_model=64, depth=2), steps=1000, batch_size=32, learning_rate=2e-3,
                  eval_every=200),
    "paper": dict(model=dict(d_model=128, depth=4), steps=50_000, batch_size=64,
                  learning_rate=1e-3, eval_every=2000, checkpoint_every=2000),
}


def run_settings(
    task_name: str,
    model: str,
    preset: str = "small",
    *,
    task_options: dict | None = None,
    model_options: dict | None = None,
    **training: Any,
) -> dict[str, Any]:
    """The `RunConfig` fields for a task, model family and preset, then overrides."""
    if preset not in ("small", "paper"):
        raise ValueError(f"`preset` must be 'small' or 'paper', got preset={preset!r}.")
    task_options = dict(task_options or {})
    task = make_task(task_name, preset=preset, **task_options)
    settings = dict(TASK_PRESETS.get(task_name, DEFAULT_TASK_PRESET)[preset])
    model_config = {**_family(model, preset), **settings.pop("model")}
    if model_config.get("block") == "glu":
        for name in ("expansion", "conv_kernel", "mlp_expansion"):
            model_config.pop(name, None)
    model_config.update(model_options or {})
    model_config["mixer"] = model
    model_config["pooling"] = task.pooling
    model_config["output_size"] = task.num_classes
    if task.input_kind == "tokens":
        model_config["vocab_size"] = task.vocab_size
        model_config.pop("input_size", None)
    else:
        model_config["input_size"] = task.input_size
        model_config.pop("vocab_size", None)
    # Validate now (clear errors before any training).
    recurrax.mixer_spec(model).check_options(
        model_config.get("mixer_options") or {}, owner="--model-set mixer_options"
    )
    model_config = recurrax.ModelConfig(**model_config).to_dict()
    settings.update({k: v for k, v in training.items() if v is not None})
    return dict(
        task=task_name, model=model, preset=preset, task_options=task_options,
        model_config=model_config, **settings,
    )
