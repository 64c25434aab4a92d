"""``aelight sweep``: many runs from one YAML spec, on every device, with Optuna as the engine.

    aelight sweep configs/sweeps/variants.yaml --data.data_dir data/ [--devices 0,1] [--workers_per_device 2]

The spec names what varies (a grid and/or a search space over any ``aelight fit`` option, config
files included), the random seeds, the metric to optimise or report and the number of trials. The
study lives in an Optuna storage (by default ``<out>/study.db``; ``--storage URL`` takes any
database Optuna supports, so several machines join one sweep by running the same command). Before
anything starts, every grid and search value is checked by the trials' own parser. The command
then starts N worker processes per device; each takes trials from the study with Optuna's own
samplers (grid, or TPE for a search, with optuna-integration's Lightning pruning callback) and runs
each as an ordinary ``aelight fit`` (then ``aelight test`` of its best checkpoint), ``aelight
anomaly`` or application, under ``<out>/runs/trial_<n>/``, in one fresh child of the worker's warm
forkserver (``aelight.sweep.trial_process``): the sweep's own processes never import torch or Lightning.
A trial learns how each run ended, its metrics and its best checkpoint from the run's result.json
(``aelight.run_result``). At the end it writes ``results.csv`` (a row per trial and seed: its
settings, seed, metrics, status, seconds, reason, host and device, run folder) and ``results.md``
(mean ± std over seeds per setting), and prints the latter.

A failed trial (NaN, a setting that cannot work, a killed run) is recorded with its one-line reason
and the others go on (a sweep none of whose trials completed exits with 1); Ctrl-C or SIGTERM stops
the workers and their runs (on Linux they stop too when the sweep is killed outright); running the
same command again runs what is missing (interrupted trials included) and no finished trial twice. A
trial whose worker goes silent (a machine that crashed, on a shared storage) is failed by Optuna's
heartbeat check and run again by the other workers. ``--results`` writes and prints the results of
the study as it stands, starting nothing.

One job a module: ``spec`` (the typed spec, checked as it loads), ``preflight`` (its options checked
by the trials' parser), ``study`` (Optuna bookkeeping: what is left, what a stopped sweep left
behind), ``trial`` (one trial's runs and metrics), ``workers`` (worker processes and signals),
``results`` (results.csv and results.md), ``pruning`` (the runs' pruning callback), ``command`` (the
command line).
"""
