"""One typed configuration for every entry point: the schema, and the strict loader that fills it."""

from common.config.loading import load_config
from common.config.schema import (
    STUDY_ARMS,
    AppConfig,
    DataConfig,
    EvaluationConfig,
    FederationConfig,
    ModelConfig,
    OutputConfig,
    PersonalizationConfig,
    PrivacyConfig,
    SecureAggregationConfig,
    StrategyConfig,
    StudyConfig,
    TrainingConfig,
    resolve_class_names,
)

__all__ = [
    "STUDY_ARMS",
    "AppConfig",
    "DataConfig",
    "EvaluationConfig",
    "FederationConfig",
    "ModelConfig",
    "OutputConfig",
    "PersonalizationConfig",
    "PrivacyConfig",
    "SecureAggregationConfig",
    "StrategyConfig",
    "StudyConfig",
    "TrainingConfig",
    "load_config",
    "resolve_class_names",
]
