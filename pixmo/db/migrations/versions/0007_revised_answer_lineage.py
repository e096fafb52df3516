"""qa_pairs: a revised ask-the-model answer names the model and prompt that wrote it

Until now the row kept the model and prompt version of the first answer, and the writer of the
current one was only in its last revision entry; the export's lineage read the row. Data only.

Revision ID: 0007
Revises: 0006
"""
import json
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

QA = sa.table("qa_pairs", sa.column("id", sa.Integer), sa.column("caption_id", sa.Integer),
              sa.column("source", sa.String), sa.column("model", sa.String),
              sa.column("prompt_version", sa.String), sa.column("idx", sa.Integer),
              sa.column("revisions", sa.JSON))


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(QA.c.id, QA.c.caption_id, QA.c.model, QA.c.prompt_version, QA.c.revisions)
                        .where(QA.c.source == "ask").order_by(QA.c.id)).all()
    for qa_id, caption_id, model, prompt, revisions in rows:
        if isinstance(revisions, str):
            revisions = json.loads(revisions)
        if not revisions:
            continue
        last = revisions[-1]
        # entries written before revised_by_* existed named the writer of the answer that followed them
        writer = (last.get("revised_by_model", last.get("model")), last.get("revised_by_prompt", last.get("prompt_version")))
        if None in writer or writer == (model, prompt):
            continue
        values = {"model": writer[0], "prompt_version": writer[1]}
        if caption_id is not None:  # (caption, model, prompt, idx) is unique
            values["idx"] = 1 + (bind.execute(sa.select(sa.func.max(QA.c.idx)).where(
                QA.c.caption_id == caption_id, QA.c.model == writer[0], QA.c.prompt_version == writer[1])).scalar() or 0)
        bind.execute(sa.update(QA).where(QA.c.id == qa_id).values(**values))


def downgrade() -> None:
    pass  # the writers stay right; the first answer's are in the revision entries
