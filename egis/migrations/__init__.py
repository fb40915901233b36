"""Alembic migrations for the Egis schema (`egis db upgrade` / `egis db downgrade`)."""
