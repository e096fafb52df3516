"""Exporters: webdataset shards (`export_webdataset`), PixMo parquet (`export_hf`) and `verify_export`.

    from pixmo.export import ExportFilters, WebDatasetOptions, export_webdataset, verify_export

    result = export_webdataset(db, store, "out/", ExportFilters(review_status=("approved",)),
                               WebDatasetOptions(maxcount=5000, val_fraction=0.05))
    report = verify_export("out/")
    assert report.ok, report.problems
"""

from pixmo.export.errors import ExportError, ManifestError
from pixmo.export.hf import HFExportResult, export_hf
from pixmo.export.manifest import MANIFEST_NAME, read_manifest
from pixmo.export.options import ExportFilters, WebDatasetOptions, parse_size, parse_time
from pixmo.export.target import open_target
from pixmo.export.verify import Problem, VerifyReport, verify_export
from pixmo.export.wds import ExportResult, export_webdataset

__all__ = [
    "MANIFEST_NAME",
    "ExportError",
    "ExportFilters",
    "ExportResult",
    "HFExportResult",
    "ManifestError",
    "Problem",
    "VerifyReport",
    "WebDatasetOptions",
    "export_hf",
    "export_webdataset",
    "open_target",
    "parse_size",
    "parse_time",
    "read_manifest",
    "verify_export",
]
