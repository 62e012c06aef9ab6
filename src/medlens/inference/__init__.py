"""One path from uint8 images to probabilities and decisions, used by every consumer."""
