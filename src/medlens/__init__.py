"""medlens: train, evaluate, explain and serve medical image classifiers.

Importing medlens is cheap and has no side effects: no folders are created, nothing is
downloaded, and torch / MONAI / Lightning are imported only by the functions that need them.
"""

__version__ = "0.1.0"
