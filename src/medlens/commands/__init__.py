"""The commands of ``medlens``: one module per command, each with ``add_parser(subparsers)``
(registering its options and ``func=run``) and ``run(args) -> exit code``.

A command parses, calls one library function and prints. Every module imports only the standard
library (and :mod:`medlens.commands._options`) at the top, so building the parser stays instant;
the library loads when a command runs.
"""

# In ``medlens --help`` order.
COMMANDS: tuple[str, ...] = (
    "datasets", "fetch", "preview", "models", "train", "pretrain", "evaluate", "robustness", "ood", "cv", "tune",
    "compare", "bench",
    "report", "explain", "predict", "export", "serve",
)
