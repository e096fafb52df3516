"""Curation queries behind the dashboard: overview funnel, annotators, browse, quality, reviews,
exports. Everything aggregates in SQL and pages with keysets, so it stays fast at a million images;
the Streamlit pages in ``dashboard/`` only call these functions."""

from pixmo.curation.annotators import AnnotatorStats, annotator_stats
from pixmo.curation.browse import BrowseFilters, BrowseItem, BrowsePage, browse_images, filter_options, image_detail, review_targets
from pixmo.curation.draw import draw_point_sets, label_colors
from pixmo.curation.exports import is_remote, list_exports, read_manifest
from pixmo.curation.gold import DEFAULT_TOLERANCE, gold_points, points_match, score_point_set
from pixmo.curation.overview import FUNNEL_STAGES, FunnelStage, ProjectFunnel, collection_over_time, funnel
from pixmo.curation.quality import METRICS, Histogram, faithfulness_score, flag_counts, flagged_items, histogram
from pixmo.curation.review import (
    NotAllowedError,
    Reviewer,
    login,
    login_with_token,
    logout,
    reviewer_by_id,
    reviewer_for_login,
    submit_review,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "FUNNEL_STAGES",
    "METRICS",
    "AnnotatorStats",
    "BrowseFilters",
    "BrowseItem",
    "BrowsePage",
    "FunnelStage",
    "Histogram",
    "NotAllowedError",
    "ProjectFunnel",
    "Reviewer",
    "annotator_stats",
    "browse_images",
    "collection_over_time",
    "draw_point_sets",
    "faithfulness_score",
    "filter_options",
    "flag_counts",
    "flagged_items",
    "funnel",
    "gold_points",
    "histogram",
    "image_detail",
    "is_remote",
    "label_colors",
    "list_exports",
    "login",
    "login_with_token",
    "points_match",
    "read_manifest",
    "review_targets",
    "logout",
    "reviewer_by_id",
    "reviewer_for_login",
    "score_point_set",
    "submit_review",
]
