"""qa_pairs: CapQA pairs are stored accepted

`pixmo rewrite capqa` stored its pairs as ``pending`` while every exporter takes only ``accepted``
QA, and nothing ever accepted a CapQA pair: none could be exported. The stage now stores them
``accepted`` (a reviewer's reject or flag still leaves one out); this turns the pending ones
written before into accepted ones. Data only.

Revision ID: 0008
Revises: 0007
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

QA = sa.table("qa_pairs", sa.column("source", sa.String), sa.column("status", sa.String))


def upgrade() -> None:
    op.get_bind().execute(
        sa.update(QA).where(QA.c.source == "capqa", QA.c.status == "pending").values(status="accepted")
    )


def downgrade() -> None:
    pass  # accepted pairs stay accepted: the older code exports them as it always did accepted ones
