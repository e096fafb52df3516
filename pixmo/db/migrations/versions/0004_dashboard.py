"""dashboard: covering indexes for per-project funnels and browsing at scale, partial indexes of flagged rows

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEXES = [
    ("ix_recordings_project_id_image_id", "recordings", ["project_id", "image_id"]),
    ("ix_captions_project_id_image_id_status", "captions", ["project_id", "image_id", "status"]),
    ("ix_point_sets_project_id_image_id", "point_sets", ["project_id", "image_id"]),
    ("ix_qa_pairs_project_id_image_id_status", "qa_pairs", ["project_id", "image_id", "status"]),
    ("ix_transcripts_recording_id_status", "transcripts", ["recording_id", "status"]),
    ("ix_assignments_status_submitted_at", "assignments", ["status", "submitted_at"]),
]


# Partial indexes of the flagged rows (the predicate is written per dialect).
FLAGGED = [("ix_transcripts_flagged", "transcripts"), ("ix_captions_flagged", "captions")]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    for name, table in FLAGGED:
        op.create_index(name, table, ["id"], unique=False, sqlite_where=sa.text("json_array_length(flags) > 0"),
                        postgresql_where=sa.text("jsonb_array_length(flags) > 0"))


def downgrade() -> None:
    for name, table in reversed(FLAGGED):
        op.drop_index(name, table_name=table)
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
