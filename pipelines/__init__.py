"""Batch stages (ingest, transcribe, rewrite, export) and their executors."""
