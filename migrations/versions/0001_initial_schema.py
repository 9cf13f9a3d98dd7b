"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Every change to a key or a provider (through any gateway process, the CLI or
# plain SQL) notifies `aigw_changes` on commit; gateway processes LISTEN and
# refresh their key caches. Payload: "<table>:<id>" (models report their provider).
# The contract is named in code in aigw.db.notify; this copy stays as written
# (history), and tests/db/test_notify.py holds the two equal.
_NOTIFY_SQL = (
    """
CREATE FUNCTION aigw_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    IF TG_TABLE_NAME = 'provider_models' THEN
        payload := 'providers:' || COALESCE(NEW.provider_id, OLD.provider_id)::text;
    ELSE
        payload := TG_TABLE_NAME || ':' || COALESCE(NEW.id, OLD.id)::text;
    END IF;
    PERFORM pg_notify('aigw_changes', payload);
    RETURN NULL;
END $$
""",
    *(
        f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION aigw_notify_change()"
        for table in ("api_keys", "providers", "provider_models")
    ),
)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('entity_type', sa.String(length=32), nullable=False),
    sa.Column('entity_id', sa.UUID(), nullable=False),
    sa.Column('before', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('after', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_entity', 'audit_log', ['entity_type', 'entity_id', 'id'], unique=False)
    op.create_table('idempotency_records',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.LargeBinary(length=32), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response_sealed', sa.Text(), nullable=False),
    sa.Column('resource_id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_idempotency_records'))
    )
    op.create_index(op.f('ix_idempotency_records_created_at'), 'idempotency_records', ['created_at'], unique=False)
    op.create_table('providers',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('base_url', sa.String(length=2048), nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.CheckConstraint("base_url ~ '^https?://'", name=op.f('ck_providers_base_url_scheme')),
    sa.CheckConstraint("kind IN ('openai', 'anthropic')", name=op.f('ck_providers_kind')),
    sa.CheckConstraint("name ~ '^[A-Za-z0-9._-]{1,64}$'", name=op.f('ck_providers_name_format')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_providers'))
    )
    op.execute("CREATE UNIQUE INDEX uq_providers_lower_name ON providers (lower(name))")
    op.create_table('usage_records',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('api_key_id', sa.UUID(), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('status_code', sa.SmallInteger(), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('upstream_input_tokens', sa.Integer(), nullable=True),
    sa.Column('upstream_output_tokens', sa.Integer(), nullable=True),
    sa.Column('input_limit', sa.Integer(), nullable=False),
    sa.Column('output_limit', sa.Integer(), nullable=False),
    sa.Column('usage_limit', sa.String(length=16), nullable=False),
    sa.Column('input_limit_exceeded', sa.Boolean(), nullable=False),
    sa.Column('output_limit_exceeded', sa.Boolean(), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('latency_ms', sa.Double(), nullable=False),
    sa.Column('ttfb_ms', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_records'))
    )
    op.create_index('ix_usage_records_api_key_id_created_at', 'usage_records', ['api_key_id', 'created_at'], unique=False)
    op.create_table('provider_models',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('provider_id', sa.UUID(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('encoding', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), server_default='0', nullable=False),
    sa.CheckConstraint("encoding IN ('o200k_base', 'cl100k_base')", name=op.f('ck_provider_models_encoding')),
    sa.CheckConstraint('length(name) BETWEEN 1 AND 128', name=op.f('ck_provider_models_name_length')),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_provider_models_provider_id_providers'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provider_models')),
    sa.UniqueConstraint('provider_id', 'name', name=op.f('uq_provider_models_provider_id_name'))
    )
    op.create_table('api_keys',
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('provider_id', sa.UUID(), nullable=False),
    sa.Column('model_id', sa.UUID(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='disabled', nullable=False),
    sa.Column('key_code_ciphertext', sa.Text(), nullable=False),
    sa.Column('key_code_masked', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('token_prefix', sa.String(length=16), nullable=False),
    sa.Column('input_limit', sa.Integer(), nullable=False),
    sa.Column('output_limit', sa.Integer(), server_default='0', nullable=False),
    sa.Column('usage_limit', sa.String(length=16), server_default='reject', nullable=False),
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.CheckConstraint("status IN ('enabled', 'disabled')", name=op.f('ck_api_keys_status')),
    sa.CheckConstraint("usage_limit IN ('reject', 'use_anyway')", name=op.f('ck_api_keys_usage_limit')),
    sa.CheckConstraint('input_limit BETWEEN 0 AND 10000000', name=op.f('ck_api_keys_input_limit')),
    sa.CheckConstraint('length(alias) BETWEEN 1 AND 64 AND alias = btrim(alias)', name=op.f('ck_api_keys_alias')),
    sa.CheckConstraint('output_limit BETWEEN 0 AND 10000000', name=op.f('ck_api_keys_output_limit')),
    sa.ForeignKeyConstraint(['model_id'], ['provider_models.id'], name=op.f('fk_api_keys_model_id_provider_models'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['provider_id'], ['providers.id'], name=op.f('fk_api_keys_provider_id_providers'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_keys_token_hash'))
    )
    op.create_index('ix_api_keys_created_at_id', 'api_keys', ['created_at', 'id'], unique=False)
    op.execute(
        "CREATE INDEX ix_api_keys_lower_alias_trgm ON api_keys USING gin (lower(alias) gin_trgm_ops)"
    )
    op.create_index('ix_api_keys_model_id', 'api_keys', ['model_id'], unique=False)
    op.create_index(op.f('ix_api_keys_provider_id'), 'api_keys', ['provider_id'], unique=False)
    op.create_index('ix_api_keys_updated_at_id', 'api_keys', ['updated_at', 'id'], unique=False)
    op.execute("CREATE UNIQUE INDEX uq_api_keys_lower_alias ON api_keys (lower(alias))")
    for statement in _NOTIFY_SQL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION aigw_notify_change() CASCADE")
    op.drop_index('uq_api_keys_lower_alias', table_name='api_keys')
    op.drop_index('ix_api_keys_updated_at_id', table_name='api_keys')
    op.drop_index(op.f('ix_api_keys_provider_id'), table_name='api_keys')
    op.drop_index('ix_api_keys_model_id', table_name='api_keys')
    op.drop_index('ix_api_keys_lower_alias_trgm', table_name='api_keys', postgresql_using='gin', postgresql_ops={'lower(alias)': 'gin_trgm_ops'})
    op.drop_index('ix_api_keys_created_at_id', table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_table('provider_models')
    op.drop_index('ix_usage_records_api_key_id_created_at', table_name='usage_records')
    op.drop_table('usage_records')
    op.drop_index('uq_providers_lower_name', table_name='providers')
    op.drop_table('providers')
    op.drop_index(op.f('ix_idempotency_records_created_at'), table_name='idempotency_records')
    op.drop_table('idempotency_records')
    op.drop_index('ix_audit_log_entity', table_name='audit_log')
    op.drop_table('audit_log')
