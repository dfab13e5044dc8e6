"""The metrics of image-similarity-measures that have no batched kernel (FSIM, ISSM), channel by channel in
NumPy: engine-neutral, used by both engines for the opt-in slow metrics (SPEC §5)."""
import warnings

import numpy as np


def package_metric_loop(name, reference, perturbed):
    """One image-similarity-measures metric per channel: (N, C, H, W) arrays → (N, C) float64.

    The package expects H×W×bands arrays, so each channel is passed as H×W×1. A channel the package
    rejects (ISSM calls skimage's SSIM with a 7×7 window, so maps smaller than 7 fail) gives NaN.
    """
    from image_similarity_measures import quality_metrics

    function = getattr(quality_metrics, name)
    reference = np.asarray(reference)
    perturbed = np.asarray(perturbed)
    result = np.full(reference.shape[:2], np.nan, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        for image in range(reference.shape[0]):
            for channel in range(reference.shape[1]):
                try:
                    result[image, channel] = function(reference[image, channel][..., np.newaxis],
                                                      perturbed[image, channel][..., np.newaxis])
                except ValueError:
                    pass
    return result
