"""The data path of one site: DICOM reading, preprocessing, manifests, cache, splits, site datasets, augmentation.

Import from here; the submodules are detail (``dicom_io`` reads a file, ``image_checks`` refuses one with a reason,
``breast_mask`` and ``preprocessing`` turn it into the model's input, ``image_pipeline`` holds the settings that
decide it, ``image_cache``/``parallel_decode`` decode each file once, ``manifest*`` list a site's images,
``duplicates`` finds an image listed twice, ``site_data``/``site_preprocess``/``site_images``/``splits`` make the
splits, ``patches`` turns a split into lesion and normal-tissue patches).

Each name below imports its submodule on first use (`common.lazy_exports`): writing or reading a manifest
does not pull in torch, pydicom and scikit-image.
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "common.data.augment": (
            "AUGMENT_POLICIES",
            "BRIGHTNESS",
            "CONTRAST",
            "GAMMA",
            "MAX_SHIFT",
            "AugmentPolicy",
            "augment_batch",
            "augmenter",
        ),
        "common.data.breast_mask": (
            "BreastSegmentation",
            "segment_breast",
        ),
        "common.data.dicom_header": (
            "FOR_PRESENTATION",
            "FOR_PROCESSING",
            "INTENT_CHOICES",
            "DicomHeader",
            "header_from_dataset",
            "intent_matches",
            "read_header",
        ),
        "common.data.dicom_io": (
            "IMAGE_SUFFIXES",
            "MAX_PIXELS",
            "MIN_SIDE",
            "Mammogram",
            "read_mammogram",
        ),
        "common.data.dicom_windows": (
            "ROBUST_PERCENTILES",
            "VOI_LOG_ROBUST",
            "VOI_LUT",
            "VOI_ROBUST",
            "VOI_WINDOW",
            "apply_display_transform",
            "robust_window",
        ),
        "common.data.duplicates": (
            "duplicate_rows",
            "file_identity",
        ),
        "common.data.image_cache": (
            "INDEX_FORMAT",
            "SiteImageCache",
            "dequantise",
            "quantise",
        ),
        "common.data.image_pipeline": (
            "ImageGeometry",
            "ImagePipeline",
            "Lesion",
            "source_lesion",
        ),
        "common.data.manifest": (
            "BOX_COLUMNS",
            "FINDINGS",
            "MANIFEST_COLUMNS",
            "REQUIRED_COLUMNS",
            "SPLITS",
            "ManifestRow",
            "csv_read_errors",
            "read_manifest",
            "unknown_labels",
            "write_manifest",
        ),
        "common.data.manifest_dicom": (
            "LABEL_KEYS",
            "FolderManifest",
            "ManifestHeader",
            "dicom_folder_manifest",
            "read_manifest_header",
        ),
        "common.data.manifest_federation": (
            "FEDERATION_INDEX",
            "MANIFEST_NAME",
            "NUM_CLASSES_KEY",
            "list_sites",
            "recorded_num_classes",
            "site_manifest",
            "write_federation_index",
        ),
        "common.data.parallel_decode": (
            "DecodedImage",
            "decode_rows",
            "default_workers",
        ),
        "common.data.patches": (
            "MIN_TISSUE_SHARE",
            "NORMAL_LABEL",
            "LesionPatches",
            "PatchSpot",
        ),
        "common.data.preprocessing": (
            "MAX_RESAMPLED_SIDE",
            "PREPROCESS_VERSION",
            "PreprocessGeometry",
            "preprocess",
            "preprocess_settings",
            "preprocess_with_geometry",
            "resample_to_spacing",
        ),
        "common.data.site_data": (
            "CHECKPOINT_SECONDS",
            "DEFAULT_CACHE_SUBDIR",
            "SiteData",
            "SiteImages",
            "SkippedImage",
            "cache_root",
            "load_site",
            "place_lesions",
            "preprocess_site",
        ),
        "common.data.site_preprocess": ("preprocess_site_with_geometry",),
        "common.data.splits": ("split_by_patient",),
    },
)
