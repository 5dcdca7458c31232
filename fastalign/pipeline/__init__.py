"""The end-to-end AligNet run: configuration, cached stages, report and figures."""

from .config import PRESETS, RunConfig, load_config
from .run import STAGES, run_pipeline

__all__ = ["PRESETS", "RunConfig", "STAGES", "load_config", "run_pipeline"]
