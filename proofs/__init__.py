"""proofs: the mathematical claims of the LRU and minRNN papers as measured checks.

Run them all with `python -m proofs`; call a check on your own layer or model, e.g.
`proofs.check_stability(model)`. Each check returns a [`proofs.CheckResult`][].
Run the checks that apply to a trained model with `python -m proofs --run RUN_FOLDER` or
`proofs.check_trained_model(model)`.
"""

from ._registry import (
    exit_code as exit_code,
    FAMILIES as FAMILIES,
    REGISTRY as REGISTRY,
    run_all as run_all,
    select as select,
)
from ._result import Check as Check, CheckResult as CheckResult, compare as compare
from .discretisation import (
    check_convergence_order as check_convergence_order,
    check_dense_diagonalisation as check_dense_diagonalisation,
    check_held_input_exact as check_held_input_exact,
    check_ssm_to_lru as check_ssm_to_lru,
)
from .eigenvalues import (
    check_circular_law as check_circular_law,
    check_ring_init as check_ring_init,
    check_ssm_init as check_ssm_init,
    hippo_legs_spectrum as hippo_legs_spectrum,
    s4d_inv_formula as s4d_inv_formula,
    s4d_lin_formula as s4d_lin_formula,
)
from .equivalences import (
    check_log_space as check_log_space,
    check_minlstm_normalisation as check_minlstm_normalisation,
    check_parallel_sequential_step as check_parallel_sequential_step,
    check_scan_equals_convolution as check_scan_equals_convolution,
    check_streaming as check_streaming,
)
from .normalisation import (
    check_deep_stack_variance as check_deep_stack_variance,
    check_normalised_variance as check_normalised_variance,
    check_prop3 as check_prop3,
    prop3_gain as prop3_gain,
)
from .parameterisation import (
    check_leaves_disk as check_leaves_disk,
    check_rounding_edge as check_rounding_edge,
    check_unit_disk as check_unit_disk,
    LRU_EIGENVALUES as LRU_EIGENVALUES,
    Parameterisation as Parameterisation,
    PLAIN_EXPONENTIAL as PLAIN_EXPONENTIAL,
    REAL_IMAGINARY as REAL_IMAGINARY,
    STABLE_EXPONENTIAL as STABLE_EXPONENTIAL,
)
from .report import (
    format_table as format_table,
    write_docs as write_docs,
    write_report as write_report,
)
from .stability import (
    check_bibo as check_bibo,
    check_rglru_bound as check_rglru_bound,
    check_stability as check_stability,
    recurrent_eigenvalues as recurrent_eigenvalues,
    train_briefly as train_briefly,
)
from .trained import (
    check_float_edge as check_float_edge,
    check_learnt_spectrum as check_learnt_spectrum,
    check_run as check_run,
    check_trained_model as check_trained_model,
    check_trained_normalisation as check_trained_normalisation,
    check_transition_values as check_transition_values,
    load_run as load_run,
    TrainedModelChecks as TrainedModelChecks,
    TrainedRun as TrainedRun,
    write_trained_report as write_trained_report,
)
