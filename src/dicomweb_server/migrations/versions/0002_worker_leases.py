"""worker leases: intents owned by a registered, heartbeating worker

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:30:00

Several archive processes share one index and one store; an intent may only be resolved by
another process once its owner's lease has lapsed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_heartbeat"), ["heartbeat"], unique=False)
    # Intents written before this revision have no owner: any process may resolve them.
    with op.batch_alter_table("blob_intents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_blob_intents_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("blob_intents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blob_intents_owner"))
        batch_op.drop_column("owner")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_heartbeat"))
    op.drop_table("workers")
