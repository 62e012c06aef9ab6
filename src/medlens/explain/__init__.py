"""Explanations of a classifier's decisions.

* :mod:`medlens.explain.gradcam`: Grad-CAM heatmaps (MONAI's ``GradCAM``) for 2D and 3D models,
  at the layer each model names in its ``gradcam_layer`` attribute.

Nothing is imported here (torch and MONAI load when a submodule is imported).
"""
