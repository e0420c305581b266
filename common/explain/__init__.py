"""Where a model looked: Grad-CAM heatmaps for the zoo's models, their peak and the box around it.

``cam_layers`` picks the layer per architecture, ``grad_cam`` makes the maps with Captum, ``regions`` reads a map.
Each name below imports its submodule on first use (`common.lazy_exports`): the box of a stored map needs no torch.
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "common.explain.cam_layers": ("cam_layer", "unwrapped"),
        "common.explain.grad_cam": ("class_activation_maps", "scores_and_maps"),
        "common.explain.regions": (
            "BOX_FRACTION",
            "HeadlineRegion",
            "headline_region",
            "peak_location",
            "suspicious_box",
        ),
    },
)
