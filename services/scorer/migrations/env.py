"""Alembic environment of the scorer (schema `scorer`)."""

from alembic import context

from shared.migrations import run_env

run_env(context)
