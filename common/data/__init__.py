"""The data path of one site: DICOM reading, preprocessing, manifests, cache, splits, site datasets, augmentation.

Import from here; the submodules are detail (``dicom_io`` reads a file, ``image_checks`` refuses one with a reason,
``breast_mask`` and ``preprocessing`` turn it into the model's input, ``image_pipeline`` holds the settings that
decide it, ``image_cache``/``parallel_decode`` decode each file once, ``manifest*`` list a site's images,
``duplicates`` finds an image listed twice, ``site_data``/``site_preprocess``/``site_images``/``splits`` make the
splits, ``patches`` turns a split into lesion and normal-tissue patches).
"""

from common.data.augment import BRIGHTNESS, CONTRAST, GAMMA, MAX_SHIFT, augment_batch
from common.data.breast_mask import BreastSegmentation, segment_breast
from common.data.dicom_header import (
    FOR_PRESENTATION,
    FOR_PROCESSING,
    INTENT_CHOICES,
    DicomHeader,
    header_from_dataset,
    intent_matches,
    read_header,
)
from common.data.dicom_io import IMAGE_SUFFIXES, MAX_PIXELS, MIN_SIDE, Mammogram, read_mammogram
from common.data.dicom_windows import (
    ROBUST_PERCENTILES,
    VOI_LOG_ROBUST,
    VOI_LUT,
    VOI_ROBUST,
    VOI_WINDOW,
    apply_display_transform,
    robust_window,
)
from common.data.duplicates import duplicate_rows, file_identity
from common.data.image_cache import INDEX_FORMAT, SiteImageCache, dequantise, quantise
from common.data.image_pipeline import ImageGeometry, ImagePipeline, Lesion, source_lesion
from common.data.manifest import (
    BOX_COLUMNS,
    FINDINGS,
    MANIFEST_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
    ManifestRow,
    csv_read_errors,
    read_manifest,
    unknown_labels,
    write_manifest,
)
from common.data.manifest_dicom import (
    LABEL_KEYS,
    FolderManifest,
    ManifestHeader,
    dicom_folder_manifest,
    read_manifest_header,
)
from common.data.manifest_federation import (
    FEDERATION_INDEX,
    MANIFEST_NAME,
    NUM_CLASSES_KEY,
    list_sites,
    recorded_num_classes,
    site_manifest,
    write_federation_index,
)
from common.data.parallel_decode import DecodedImage, decode_rows, default_workers
from common.data.patches import MIN_TISSUE_SHARE, NORMAL_LABEL, LesionPatches, PatchSpot
from common.data.preprocessing import (
    MAX_RESAMPLED_SIDE,
    PREPROCESS_VERSION,
    PreprocessGeometry,
    preprocess,
    preprocess_settings,
    preprocess_with_geometry,
    resample_to_spacing,
)
from common.data.site_data import (
    CHECKPOINT_SECONDS,
    DEFAULT_CACHE_SUBDIR,
    SiteData,
    SiteImages,
    SkippedImage,
    cache_root,
    load_site,
    place_lesions,
    preprocess_site,
)
from common.data.site_preprocess import preprocess_site_with_geometry
from common.data.splits import split_by_patient

__all__ = [
    "BOX_COLUMNS",
    "BRIGHTNESS",
    "CHECKPOINT_SECONDS",
    "CONTRAST",
    "DEFAULT_CACHE_SUBDIR",
    "FEDERATION_INDEX",
    "FINDINGS",
    "FOR_PRESENTATION",
    "FOR_PROCESSING",
    "GAMMA",
    "IMAGE_SUFFIXES",
    "INDEX_FORMAT",
    "INTENT_CHOICES",
    "LABEL_KEYS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MAX_PIXELS",
    "MAX_RESAMPLED_SIDE",
    "MAX_SHIFT",
    "MIN_SIDE",
    "MIN_TISSUE_SHARE",
    "NORMAL_LABEL",
    "NUM_CLASSES_KEY",
    "PREPROCESS_VERSION",
    "REQUIRED_COLUMNS",
    "ROBUST_PERCENTILES",
    "SPLITS",
    "VOI_LOG_ROBUST",
    "VOI_LUT",
    "VOI_ROBUST",
    "VOI_WINDOW",
    "BreastSegmentation",
    "DecodedImage",
    "DicomHeader",
    "FolderManifest",
    "ImageGeometry",
    "ImagePipeline",
    "Lesion",
    "LesionPatches",
    "Mammogram",
    "ManifestHeader",
    "ManifestRow",
    "PatchSpot",
    "PreprocessGeometry",
    "SiteData",
    "SiteImageCache",
    "SiteImages",
    "SkippedImage",
    "apply_display_transform",
    "augment_batch",
    "cache_root",
    "csv_read_errors",
    "decode_rows",
    "default_workers",
    "dequantise",
    "dicom_folder_manifest",
    "duplicate_rows",
    "file_identity",
    "header_from_dataset",
    "intent_matches",
    "list_sites",
    "load_site",
    "place_lesions",
    "preprocess",
    "preprocess_settings",
    "preprocess_site",
    "preprocess_site_with_geometry",
    "preprocess_with_geometry",
    "quantise",
    "read_header",
    "read_mammogram",
    "read_manifest",
    "read_manifest_header",
    "recorded_num_classes",
    "resample_to_spacing",
    "robust_window",
    "segment_breast",
    "site_manifest",
    "source_lesion",
    "split_by_patient",
    "unknown_labels",
    "write_federation_index",
    "write_manifest",
]
