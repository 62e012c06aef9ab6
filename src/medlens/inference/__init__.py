"""One path from uint8 images to probabilities and decisions, used by every consumer.

:class:`InferenceModel` (uint8 images -> probabilities), :func:`probabilities` (logits ->
probabilities by task), :func:`decide` (probabilities -> labels, the one decision rule) and
:func:`predict` (a whole split -> :class:`Predictions`).
"""

from medlens.inference.model import InferenceModel, decide, probabilities
from medlens.inference.predict import Predictions, predict

__all__ = ["InferenceModel", "Predictions", "decide", "predict", "probabilities"]
