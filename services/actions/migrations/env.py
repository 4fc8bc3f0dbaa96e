"""Alembic environment of the actions service (schema `actions`)."""

from alembic import context

from shared.migrations import run_env

run_env(context)
