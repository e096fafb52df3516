"""Data contracts shared by the API, the pipelines and the exporters.

- `schemas.export`: `ExportSample`, the JSON record written per image in webdataset shards.
- `schemas.pixmo_hf`: one model (and Arrow schema) per released PixMo Hugging Face row type.
- `schemas.transcript`: `TranscriptRecord`, what the transcription stage writes per recording.
- `schemas.generate`: writes/checks the JSON Schema files in ``schemas/json/``.
"""

from schemas.export import (
    EXPORT_SCHEMA_VERSION,
    ExportCaption,
    ExportImage,
    ExportLineage,
    ExportPointSet,
    ExportQA,
    ExportRecording,
    ExportReview,
    ExportSample,
    ExportTranscript,
)
from schemas.pixmo_hf import (
    HF_REPOS,
    ROW_MODELS,
    SUBSETS,
    PixmoAskModelAnythingRow,
    PixmoCapQaRow,
    PixmoCapRow,
    PixmoCountRow,
    PixmoHFRow,
    PixmoPointExplanationsRow,
    PixmoPointsRow,
    arrow_schema,
    rows_to_table,
)
from schemas.transcript import TranscriptRecord

__all__ = [
    "TranscriptRecord",
    "EXPORT_SCHEMA_VERSION",
    "ExportCaption",
    "ExportImage",
    "ExportLineage",
    "ExportPointSet",
    "ExportQA",
    "ExportRecording",
    "ExportReview",
    "ExportSample",
    "ExportTranscript",
    "HF_REPOS",
    "PixmoAskModelAnythingRow",
    "PixmoCapQaRow",
    "PixmoCapRow",
    "PixmoCountRow",
    "PixmoHFRow",
    "PixmoPointExplanationsRow",
    "PixmoPointsRow",
    "ROW_MODELS",
    "SUBSETS",
    "arrow_schema",
    "rows_to_table",
]
