"""recurrax experiments: speed measurements (and, later, synthetic long-range tasks).

Run from a checkout as `python -m experiments ...`; see `python -m experiments --help`.
"""
