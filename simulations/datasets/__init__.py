"""Public-dataset adapters and patient-level partitioners that turn data into per-site manifests."""

from simulations.datasets.labels import (
    BENIGN_VS_MALIGNANT,
    MALIGNANT_VS_REST,
    NORMAL_VS_ABNORMAL,
    TASKS,
    THREE_CLASS,
    task_num_classes,
)
from simulations.datasets.partition import SCHEMES, partition_patients
from simulations.datasets.prepare import ADAPTERS, POOLED, PreparedSite, prepare_dataset, prepare_partition

__all__ = [
    "ADAPTERS",
    "BENIGN_VS_MALIGNANT",
    "MALIGNANT_VS_REST",
    "NORMAL_VS_ABNORMAL",
    "POOLED",
    "SCHEMES",
    "TASKS",
    "THREE_CLASS",
    "PreparedSite",
    "partition_patients",
    "prepare_dataset",
    "prepare_partition",
    "task_num_classes",
]
