"""recordings, point_sets, qa_pairs: index assignment_id (a verdict finds a submission's items by it)

Revision ID: 0006
Revises: 0005
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ("recordings", "point_sets", "qa_pairs")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_assignment_id", table, ["assignment_id"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_assignment_id", table_name=table)
