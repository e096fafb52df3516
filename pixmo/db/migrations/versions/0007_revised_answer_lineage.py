"""qa_pairs: a revised ask-the-model answer names the model and prompt that wrote it

Until now the row kept the model and prompt version of the first answer, and the writer of the
current one was only in its last revision entry; the export's lineage read the row. Each revision
entry now names the writer of the answer it replaces (older entries named the next one's). Data only.

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


def _rewritten(model: str, prompt: str, revisions: list) -> tuple[tuple[str, str], list]:
    """(writer of the current answer, entries that each name the writer of the answer they replace).

    Entries came in two older forms: the first named the writer of the answer that *followed* them;
    the second named the writer of the replaced answer and added ``revised_by_*`` for the next one.
    """
    writer, out = (model, prompt), []
    for entry in revisions:
        entry = dict(entry)
        if "revised_by_model" in entry:
            following = (entry.pop("revised_by_model"), entry.pop("revised_by_prompt", entry.get("prompt_version")))
        else:
            following = (entry.get("model"), entry.get("prompt_version"))
        entry["model"], entry["prompt_version"] = writer
        out.append(entry)
        if None not in following:
            writer = following
    return writer, out


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(QA.c.id, QA.c.caption_id, QA.c.model, QA.c.prompt_version, QA.c.revisions)
                        .where(QA.c.source == "ask").order_by(QA.c.id)).all()
    for qa_id, caption_id, model, prompt, revisions in rows:
        if isinstance(revisions, str):
            revisions = json.loads(revisions)
        if not revisions:
            continue
        writer, entries = _rewritten(model, prompt, revisions)
        values = {"revisions": entries}
        if writer != (model, prompt):
            values.update(model=writer[0], prompt_version=writer[1])
            if caption_id is not None:  # (caption, model, prompt, idx) is unique
                values["idx"] = 1 + (bind.execute(sa.select(sa.func.max(QA.c.idx)).where(
                    QA.c.caption_id == caption_id, QA.c.model == writer[0],
                    QA.c.prompt_version == writer[1])).scalar() or 0)
        bind.execute(sa.update(QA).where(QA.c.id == qa_id).values(**values))


def downgrade() -> None:
    pass  # the writers stay right: the first answer's is in the first revision entry
